"""The training loop: the only place that knows the step order (DESIGN.md section 3).

Never imports ray or mlflow: results leave through a ``Tracker`` and an ``on_report`` callback
(the Ray trainable passes one that calls ``tune.report``).
"""

from __future__ import annotations

import copy
import json
import math
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsearch.config import Config, save_resolved
from tsearch.data import InfiniteLoader, load_images
from tsearch.diffusion.loss import per_sample_mse, per_sample_vlb_bpd
from tsearch.diffusion.model import build_model, count_parameters
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import CheckpointError, DivergenceError
from tsearch.seeding import derive_seed
from tsearch.timesteps import (
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
    build_sampler,
    build_weighting,
    check_config,
)
from tsearch.tracking.base import NullTracker, TimestepHistory, Tracker
from tsearch.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tsearch.train.evaluate import Evaluator
from tsearch.train.optim import apply_schedule, build_optimizer, schedule_at
from tsearch.train.progress import Progress

ReportFn = Callable[[dict[str, float], Path], None]


def select_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from tsearch.errors import ConfigError

            raise ConfigError("config error: train.device = 'cuda' but no CUDA device is "
                              "visible; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class TrainResult:
    run_dir: Path
    run_id: str | None
    steps: int
    kimg: float
    seconds: float
    fid_history: list[tuple[float, float]] = field(default_factory=list)

    @property
    def final_fid(self) -> float | None:
        return self.fid_history[-1][1] if self.fid_history else None

    @property
    def best_fid(self) -> float | None:
        return min(f for _, f in self.fid_history) if self.fid_history else None


class _Stats:
    """Loss statistics accumulated on the device between log points (no per-step sync)."""

    def __init__(self, num_timesteps: int, device: torch.device):
        self.T = num_timesteps
        self.device = device
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device, dtype=torch.float64)
        self.objective, self.raw, self.grad_norm = z.clone(), z.clone(), z.clone()
        self.q_sum = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.q_count = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.steps = 0
        self.samples = 0

    def add(self, losses: torch.Tensor, objective: torch.Tensor, t: torch.Tensor,
            grad_norm: torch.Tensor | None) -> None:
        losses = losses.detach().double()
        self.objective += objective.detach().double()
        self.raw += losses.sum()
        q = torch.div(t * 4, self.T, rounding_mode="floor")
        self.q_sum += torch.bincount(q, weights=losses, minlength=4)
        self.q_count += torch.bincount(q, minlength=4).double()
        if grad_norm is not None:
            self.grad_norm += grad_norm.detach().double()
        self.steps += 1
        self.samples += losses.numel()

    def summary(self) -> dict[str, float]:
        if self.steps == 0:
            return {}
        q = (self.q_sum / self.q_count.clamp_min(1)).tolist()
        out = {
            "train/loss": float(self.objective) / self.steps,
            "train/loss_unweighted": float(self.raw) / self.samples,
            "train/grad_norm": float(self.grad_norm) / self.steps,
        }
        counts = self.q_count.tolist()
        for i in range(4):
            if counts[i] > 0:
                out[f"train/loss_q{i + 1}"] = q[i]
        return out


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)


class _Probe:
    """Runs a sampler's ProbeSpec: fixed images and noise, losses before/after the update."""

    def __init__(self, model, schedule: NoiseSchedule, prediction: str, generator, autocast,
                 chunk: int):
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.generator = generator
        self.autocast = autocast
        self.chunk = chunk

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device)

    @torch.no_grad()
    def _losses(self, spec: ProbeSpec, x0: torch.Tensor, t: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        fn = per_sample_vlb_bpd if spec.loss == "vlb" else per_sample_mse
        out = []
        for s in range(0, len(t), self.chunk):
            with self.autocast():
                out.append(fn(self.model, self.schedule, x0[s:s + self.chunk],
                              t[s:s + self.chunk], noise[s:s + self.chunk],
                              self.prediction).float())
        return torch.cat(out)

    def _grad_sq_norms(self, spec: ProbeSpec, x0, t, noise) -> torch.Tensor:
        """Squared norm of each row's loss gradient, vectorised with torch.func."""
        from torch.func import functional_call, grad, vmap

        params = {k: v.detach() for k, v in self.model.named_parameters()}
        fn = per_sample_vlb_bpd if spec.loss == "vlb" else per_sample_mse

        def row_loss(p, x, tt, nz):
            wrapped = _Functional(self.model, p, functional_call)
            return fn(wrapped, self.schedule, x[None], tt[None], nz[None], self.prediction)[0]

        out = []
        for s in range(0, len(t), self.chunk):
            with self.autocast():
                g = vmap(grad(row_loss), in_dims=(None, 0, 0, 0), randomness="different")(
                    params, x0[s:s + self.chunk], t[s:s + self.chunk], noise[s:s + self.chunk])
            out.append(sum(v.float().flatten(1).pow(2).sum(1) for v in g.values()))
        return torch.cat(out)

    def before(self, spec: ProbeSpec, x0_batch: torch.Tensor) -> dict[str, Any]:
        idx = spec.image_index.to(x0_batch.device)
        x0 = x0_batch[idx]
        t = spec.t.to(x0_batch.device)
        noise = self._noise(x0)
        state: dict[str, Any] = {"x0": x0, "t": t, "noise": noise}
        if spec.kind == "grad_norm":
            state["grad_sq_norm"] = self._grad_sq_norms(spec, x0, t, noise)
            state["before"] = self._losses(spec, x0, t, noise)
            state["forwards"] = 4 * len(t)  # forward + backward (2) + loss forward
        else:
            state["before"] = self._losses(spec, x0, t, noise)
            state["forwards"] = len(t)
        return state

    def after(self, spec: ProbeSpec, state: dict[str, Any]) -> ProbeResult:
        after = None
        forwards = state["forwards"]
        if spec.kind == "delta":
            noise = state["noise"] if spec.common_noise else self._noise(state["x0"])
            after = self._losses(spec, state["x0"], state["t"], noise).cpu()
            forwards += len(state["t"])
        gsn = state.get("grad_sq_norm")
        return ProbeResult(spec=spec, before=state["before"].cpu(), after=after,
                           grad_sq_norm=None if gsn is None else gsn.cpu(), forwards=forwards)


class _Functional(torch.nn.Module):
    """Calls ``model`` with substituted parameters (for torch.func transforms)."""

    def __init__(self, model, params, functional_call):
        super().__init__()
        self._m, self._p, self._call = model, params, functional_call

    def forward(self, x, t):
        return self._call(self._m, self._p, (x, t))


def new_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.tracking.run_name or f"{cfg.timesteps.sampler.name}"
    path = Path(cfg.train.out_dir) / f"{name}-{stamp}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    cfg: Config,
    *,
    tracker: Tracker | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    sampler: TimestepSampler | None = None,
    on_report: ReportFn | None = None,
    evaluate: bool = True,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one diffusion model with the configured timestep sampler and weighting.

    Args:
        cfg: the resolved config.
        tracker: where params, metrics and artifacts go (a NullTracker if None). ``train``
            finishes it: FINISHED, or FAILED with the reason.
        run_dir: directory for config.json, checkpoints and local metrics (created if None).
        resume: continue from the newest checkpoint in ``run_dir`` (exact: same next losses).
        sampler: an already-built sampler (tests); by default built from ``cfg``.
        on_report: called after each evaluation with its metrics and the checkpoint path.
        evaluate: compute FID at evaluation points (checkpoints are written either way).
        max_steps: stop after this many optimizer steps (benchmarks, tests).
        log: where one-line messages go (stderr by default).
    """
    check_config(cfg)
    tracker = tracker or NullTracker()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    tc, ev = cfg.train, cfg.eval
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = select_device(tc.device)
    bf16 = device.type == "cuda" and tc.precision in ("auto", "bf16")
    autocast_dtype = torch.bfloat16 if bf16 else None

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()

    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    save_resolved(cfg, run_dir / "config.json")

    # Build data, schedule, model, EMA, optimizer, sampler and weighting.
    images = load_images(cfg.data)
    image_shape = tuple(images.shape[1:])
    loader = InfiniteLoader(images, tc.batch_size, derive_seed(tc.seed, "data"), device=device)
    schedule = NoiseSchedule.create(cfg.diffusion.schedule, cfg.diffusion.num_timesteps,
                                    cfg.diffusion.variance)
    torch.manual_seed(derive_seed(tc.seed, "init"))  # diffusers initialises from the global RNG
    model = build_model(cfg.model, image_shape[0], cfg.data.resolution, schedule.num_timesteps)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    sampler = sampler or build_sampler(cfg.timesteps.sampler, schedule,
                                       derive_seed(tc.seed, "timesteps"))
    weighting = build_weighting(cfg.timesteps.weighting, schedule, cfg.diffusion.prediction)
    noise_gen = torch.Generator(device=device).manual_seed(derive_seed(tc.seed, "noise"))
    probe_gen = torch.Generator(device=device).manual_seed(derive_seed(tc.seed, "probe"))
    probe = _Probe(model, schedule, cfg.diffusion.prediction, probe_gen, autocast,
                   chunk=max(4 * tc.batch_size, 256))
    evaluator = Evaluator(cfg, schedule, image_shape, device, autocast_dtype)

    step, images_seen, probe_forwards = 0, 0, 0
    fid_history: list[tuple[float, float]] = []
    pt_history = TimestepHistory()
    if resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise CheckpointError(f"no checkpoint in {str(ckpt_dir)!r} to resume from")
        state = load_checkpoint(path)
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match the config's model "
                                  f"({str(exc).splitlines()[0][:100]})") from None
        sampler.load_state_dict(state["sampler"])
        loader.load_state_dict(state["loader"])
        noise_gen.set_state(state["noise_gen"])
        probe_gen.set_state(state["probe_gen"])
        step, images_seen = int(state["step"]), int(state["images_seen"])
        probe_forwards = int(state["probe_forwards"])
        fid_history = [tuple(x) for x in state["fid_history"]]
        for kimg, p in zip(state["pt_kimg"], state["pt_probs"], strict=True):
            pt_history.append(kimg, np.asarray(p))
        say(f"resumed from {path} at {images_seen / 1000:.2f} kimg (step {step})")

    total_images = int(round(tc.total_kimg * 1000))
    eval_every = max(int(round(ev.every_kimg * 1000)), 1)
    log_every = max(int(round(tc.log_every_kimg * 1000)), 1)
    next_eval = (images_seen // eval_every + 1) * eval_every
    next_log = (images_seen // log_every + 1) * log_every
    metrics_file = run_dir / "metrics.jsonl"
    stats = _Stats(schedule.num_timesteps, device)
    n_params = count_parameters(model)

    if not resume:
        tracker.log_params({"config": cfg.to_dict(), "model/parameters": n_params,
                            "device": device.type})
        tracker.log_dict(cfg.to_dict(), "config.json")
    tracker.set_tags({"tsearch.run_dir": str(run_dir.resolve()),
                      "tsearch.sampler": cfg.timesteps.sampler.name,
                      "tsearch.weighting": cfg.timesteps.weighting.name})
    (run_dir / "run.json").write_text(json.dumps({"run_id": tracker.run_id}) + "\n")

    def snapshot_pt(kimg: float) -> None:
        probs = sampler.probs().double().cpu().numpy()
        pt_history.append(kimg, probs)
        tracker.log_array(probs, f"timesteps/p_t_{int(kimg * 1000):09d}.npy")
        # Written now, not at the end: a trial stopped by ASHA never reaches the end.
        np.savez(run_dir / "timesteps.npz", kimg=np.asarray(pt_history.kimgs),
                 probs=np.asarray(pt_history.matrix))

    def checkpoint() -> Path:
        state = {
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
            "loader": loader.state_dict(), "noise_gen": noise_gen.get_state(),
            "probe_gen": probe_gen.get_state(), "step": step, "images_seen": images_seen,
            "probe_forwards": probe_forwards, "fid_history": [list(x) for x in fid_history],
            "pt_kimg": [float(k) for k in pt_history.kimgs],
            "pt_probs": [torch.as_tensor(p) for p in pt_history.matrix],
            "config": cfg.to_dict(),
        }
        return save_checkpoint(state, ckpt_dir, images_seen)

    def log_point(extra: dict[str, float] | None = None) -> dict[str, float]:
        metrics = stats.summary()
        if metrics and not all(math.isfinite(metrics[k]) for k in
                               ("train/loss", "train/loss_unweighted")):
            tracker.log_metrics(metrics, step=images_seen)
            raise DivergenceError(
                f"training diverged at {images_seen / 1000:.2f} kimg (step {step}): loss is "
                f"{metrics['train/loss']}; lower optim.lr or optim.weight_decay, or enable "
                "optim.grad_clip"
            )
        elapsed = max(time.perf_counter() - interval_start[0], 1e-9)
        metrics.update(sampler.metrics())
        metrics.update({
            "progress/kimg": images_seen / 1000, "train/lr": ostate.lr,
            "train/beta1": ostate.beta1, "compute/probe_forwards": float(probe_forwards),
            "compute/train_forwards": 3.0 * images_seen,
            "perf/images_per_s": stats.samples / elapsed,
        })
        if extra:
            metrics.update(extra)
        tracker.log_metrics(metrics, step=images_seen)
        _append_jsonl(metrics_file, {"images_seen": images_seen, "step": step, **metrics})
        stats.reset()
        interval_start[0] = time.perf_counter()
        return metrics

    status, reason = "FINISHED", None
    start_time = time.perf_counter()
    interval_start = [start_time]
    bar = Progress(total_kimg=tc.total_kimg, enabled=tc.progress, start_kimg=images_seen / 1000)
    ostate = schedule_at(cfg.optim, images_seen / 1000)
    try:
        if evaluate:
            evaluator.prepare()
            tracker.set_tags({"tsearch.fid_extractor": evaluator.extractor_name})
        if evaluate and ev.at_start and images_seen == 0:
            result = evaluator(ema)
            fid_history.append((0.0, result["eval/fid"]))
            tracker.log_metrics(result, step=0)
            _append_jsonl(metrics_file, {"images_seen": 0, **result})
            snapshot_pt(0.0)
        model.train()
        while images_seen < total_images and (max_steps is None or step < max_steps):
            kimg = images_seen / 1000
            ostate = schedule_at(cfg.optim, kimg)
            apply_schedule(optimizer, ostate)
            x0 = loader.next_batch()
            if device.type == "cuda":
                x0 = x0.contiguous(memory_format=torch.channels_last)
            ctx = StepContext(step=step, kimg=kimg, progress=images_seen / total_images,
                              lr=ostate.lr, x0=x0)

            # Draw timesteps; fix probe images and noise, measure "before".
            draw = sampler.sample(x0.shape[0], ctx)
            t = draw.t.to(device, non_blocking=True)
            spec = sampler.probe_request(ctx)
            probe_state = probe.before(spec, x0) if spec is not None else None

            # Per-sample losses, fed unweighted to the sampler.
            noise = torch.randn(x0.shape, generator=noise_gen, device=device)
            with autocast():
                losses = per_sample_mse(model, schedule, x0, t, noise, cfg.diffusion.prediction)
            sampler.observe(draw, losses.detach(), ctx)

            # Weighted objective, backward, optimizer step.
            factor = weighting.weights(t) * draw.importance_weight.to(device)
            objective = (losses * factor).mean()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            grad_norm = None
            if cfg.optim.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                           cfg.optim.grad_clip, foreach=True)
            optimizer.step()

            # Update EMA.
            _ema_update(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))

            # Look-ahead measurements on the same images and noise.
            if spec is not None:
                result = probe.after(spec, probe_state)
                probe_forwards += result.forwards
                sampler.observe_probe(result, ctx)

            step += 1
            images_seen += x0.shape[0]
            stats.add(losses, objective, t, grad_norm)

            at_eval = images_seen >= next_eval or images_seen >= total_images
            if images_seen >= next_log or at_eval:
                last = log_point()
                bar.update(images_seen / 1000, loss=last.get("train/loss"))
                next_log = (images_seen // log_every + 1) * log_every
            if at_eval:
                extra: dict[str, float] = {"kimg": images_seen / 1000, "step": float(step)}
                if evaluate:
                    result = evaluator(ema)
                    fid_history.append((images_seen / 1000, result["eval/fid"]))
                    tracker.log_metrics(result, step=images_seen)
                    _append_jsonl(metrics_file, {"images_seen": images_seen, **result})
                    extra.update(result)
                    bar.update(images_seen / 1000, fid=result["eval/fid"])
                snapshot_pt(images_seen / 1000)
                tracker.flush()
                path = checkpoint()
                next_eval = (images_seen // eval_every + 1) * eval_every
                if on_report is not None:
                    extra.update({k: v for k, v in last.items() if k.startswith("train/")})
                    on_report(extra, path)
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted by the user"
        raise
    except Exception as exc:
        status = "FAILED"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        bar.close()
        seconds = time.perf_counter() - start_time
        try:
            _write_outputs(tracker, run_dir, fid_history, pt_history, cfg)
        finally:
            tracker.finish(status, reason)

    result = TrainResult(run_dir=run_dir, run_id=tracker.run_id, steps=step,
                         kimg=images_seen / 1000, seconds=seconds, fid_history=fid_history)
    say(_summary_line(result, n_params))
    return result


def _write_outputs(tracker: Tracker, run_dir: Path, fid_history, pt_history, cfg: Config) -> None:
    """Local copies and plots of what was logged (written even when the run failed)."""
    from tsearch import plots

    if len(pt_history.kimgs):
        heat = plots.plot_timestep_heatmap(
            pt_history.kimgs, np.asarray(pt_history.matrix), run_dir / "p_t_heatmap.png",
            title=f"p(t) over training: {cfg.timesteps.sampler.name}")
        tracker.log_artifact(heat, "plots")
    if fid_history:
        kimgs, fids = zip(*fid_history, strict=True)
        curve = plots.plot_fid_curve({cfg.timesteps.sampler.name: (kimgs, fids)},
                                     run_dir / "fid_curve.png", title="FID vs kimg")
        tracker.log_artifact(curve, "plots")


def _summary_line(result: TrainResult, n_params: int) -> str:
    rate = result.kimg * 1000 / max(result.seconds, 1e-9)
    fid = ""
    if result.fid_history:
        first, last = result.fid_history[0][1], result.fid_history[-1][1]
        best_kimg, best = min(result.fid_history, key=lambda x: x[1])
        fid = f", FID {first:.2f} -> {last:.2f} (best {best:.2f} at {best_kimg:g} kimg)"
    run = f", MLflow run {result.run_id}" if result.run_id else ""
    return (f"done: {result.kimg:g} kimg, {result.steps} steps in {result.seconds:.0f} s "
            f"({rate:.0f} img/s, {n_params / 1e6:.2f}M params){fid}; run dir {result.run_dir}"
            f"{run}")


def resume_config_path(run_dir: str | Path) -> Path:
    """config.json of a run directory (``tsearch train --resume``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    return path


def previous_run_id(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["TrainResult", "previous_run_id", "resume_config_path", "train"]
