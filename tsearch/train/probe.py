"""Probe kinds: the measurements a sampler may ask for around an optimizer step.

A sampler's :class:`~tsearch.timesteps.ProbeSpec` names a kind; the trainer runs
:meth:`ProbeRunner.before` ahead of the update and :meth:`ProbeRunner.after` behind it, on fixed
images and noise, and hands the :class:`~tsearch.timesteps.ProbeResult` back. Adding a kind is a
:class:`ProbeKind` subclass here plus one line in ``PROBE_KINDS``; the loop does not change.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch

from tsearch.diffusion.loss import per_sample_mse, per_sample_vlb_bpd
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps import ProbeResult, ProbeSpec


class ProbeRunner:
    """Evaluates a spec's losses (and gradients) in chunks, with its own noise generator."""

    def __init__(self, model: torch.nn.Module, schedule: NoiseSchedule, prediction: str,
                 generator: torch.Generator, autocast: Callable[[], AbstractContextManager],
                 chunk: int):
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.generator = generator
        self.autocast = autocast
        self.chunk = chunk

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device)

    def _loss_fn(self, spec: ProbeSpec):
        # Flow matching has no VLB term per step: its look-ahead loss is the flow-matching loss
        # at the cell's middle time (docs/algorithms.md 1.1 and 6.6).
        if spec.loss == "vlb" and self.schedule.process != "flow":
            return per_sample_vlb_bpd
        return per_sample_mse

    @torch.no_grad()
    def losses(self, spec: ProbeSpec, x0: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor) -> torch.Tensor:
        """Per-row loss at the current weights, float32 [m]."""
        fn, c = self._loss_fn(spec), self.chunk
        out = []
        for s in range(0, len(t), c):
            with self.autocast():
                out.append(fn(self.model, self.schedule, x0[s:s + c], t[s:s + c],
                              noise[s:s + c], self.prediction).float())
        return torch.cat(out)

    def grad_sq_norms(self, spec: ProbeSpec, x0: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """Squared norm of each row's loss gradient, vectorised with torch.func."""
        from torch.func import functional_call, grad, vmap

        _quiet_vmap_fallback()
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        fn, c = self._loss_fn(spec), self.chunk

        def row_loss(p, x, tt, nz):
            wrapped = _Functional(self.model, p, functional_call)
            return fn(wrapped, self.schedule, x[None], tt[None], nz[None], self.prediction)[0]

        out = []
        for s in range(0, len(t), c):
            with self.autocast():
                g = vmap(grad(row_loss), in_dims=(None, 0, 0, 0), randomness="different")(
                    params, x0[s:s + c], t[s:s + c], noise[s:s + c])
            out.append(sum(v.float().flatten(1).pow(2).sum(1) for v in g.values()))
        return torch.cat(out)

    def before(self, spec: ProbeSpec, x0_batch: torch.Tensor) -> dict[str, Any]:
        """Fix the probe's images and noise and measure what the kind needs before the update."""
        kind = PROBE_KINDS.get(spec.kind)
        if kind is None:
            raise ValueError(f"probe kind {spec.kind!r} is not one of {sorted(PROBE_KINDS)}")
        x0 = x0_batch[spec.image_index.to(x0_batch.device)]
        state: dict[str, Any] = {"kind": kind, "x0": x0, "t": spec.t.to(x0_batch.device),
                                 "noise": self.noise(x0)}
        state.update(kind.before(self, spec, state))
        return state

    def after(self, spec: ProbeSpec, state: dict[str, Any]) -> ProbeResult:
        """Measure after the update (and EMA) and package the result for the sampler."""
        extra = state["kind"].after(self, spec, state)
        forwards = state["forwards"] + extra.pop("forwards", 0)
        fields = {"before": state["before"], "grad_sq_norm": state.get("grad_sq_norm"), **extra}
        return ProbeResult(spec=spec, forwards=forwards,
                           **{k: None if v is None else v.cpu() for k, v in fields.items()})


@functools.cache
def _quiet_vmap_fallback() -> None:
    """torch.func has no batching rule for attention on CPU yet and warns at its calls (once a
    probe, in a search's trials): it then loops over the rows, same gradients, a known cost."""
    warnings.filterwarnings("ignore", message="There is a performance drop because we have not "
                            "yet implemented the batching rule", category=UserWarning)


class ProbeKind:
    """One kind of measurement: what to compute before and after the optimizer step.

    ``before`` returns entries for the probe state (at least ``before`` losses and the
    ``forwards`` spent, a backward counting as two); ``after`` returns ProbeResult fields.
    """

    name: ClassVar[str]

    @staticmethod
    def before(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        return {"before": runner.losses(spec, state["x0"], state["t"], state["noise"]),
                "forwards": len(state["t"])}

    @staticmethod
    def after(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        return {}


class DeltaProbe(ProbeKind):
    """Loss before and after the update on the same images (and, by default, the same noise)."""

    name = "delta"

    @staticmethod
    def after(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        noise = state["noise"] if spec.common_noise else runner.noise(state["x0"])
        return {"after": runner.losses(spec, state["x0"], state["t"], noise),
                "forwards": len(state["t"])}


class GradNormProbe(ProbeKind):
    """Squared per-row gradient norms at the current weights, plus the loss itself."""

    name = "grad_norm"

    @staticmethod
    def before(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        x0, t, noise = state["x0"], state["t"], state["noise"]
        return {"grad_sq_norm": runner.grad_sq_norms(spec, x0, t, noise),
                "before": runner.losses(spec, x0, t, noise),
                "forwards": 4 * len(t)}  # forward + backward (2) + loss forward


PROBE_KINDS: dict[str, type[ProbeKind]] = {
    "delta": DeltaProbe,
    "grad_norm": GradNormProbe,
}


class _Functional(torch.nn.Module):
    """Calls ``model`` with substituted parameters (for torch.func transforms)."""

    def __init__(self, model, params, functional_call):
        super().__init__()
        self._m, self._p, self._call = model, params, functional_call

    def forward(self, x, t):
        return self._call(self._m, self._p, (x, t))
