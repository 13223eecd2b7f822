"""The adaptive learned timestep sampler (Kim, Ki, Shim, Lee; CVPR 2025, arXiv 2411.09998).

A policy pi_phi(t | x0) (Beta distribution over normalised time) is trained by REINFORCE to pick
the timesteps whose gradient updates most reduce the VLB. Every ``update_every`` steps it asks
the trainer, through one probe, for losses before and after the optimizer step:

- a scan of all (or every ``scan_stride``-th) timesteps on ``scan_images`` images; the per-tau
  improvements form one row of a queue, from which a univariate F-test (sklearn's
  ``f_regression``) selects the |S| timesteps that best explain the total improvement;
- the improvement at the selected S on every image of the batch: the per-sample reward.

The defaults are the reference algorithm as the official ``Trainer.step`` runs it
(docs/algorithms.md Decisions and 1.4): fresh noise for every before/after evaluation, the
entropy added to the reward inside the REINFORCE weight and not detached,
L = -mean[log pi (r + c H)], the full-T scan.
Each deviation is a separate, searchable switch recorded with the run: ``common_noise`` (same
noise before and after: common random numbers), ``entropy_form: bonus`` (a detached entropy
bonus, L = -mean[log pi r] - c mean H, about 300x stronger near uniform), ``baseline``,
``normalize_reward``, ``policy: unconditional``, and ``scan_stride`` > 1 (a cheaper scan); and
the stabilisation switches against the policy's collapse at small scale (docs/algorithms.md
1.9-1.10), ``concentration_floor``, ``uniform_mix``, ``lr_warmup``, ``max_tv_step`` and
``skip_frozen``, with ``preset: stable`` combining them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.distributions import Beta

from tsearch.timesteps.adaptive_policy import (
    REFERENCE_FLOOR,
    CnnPolicy,
    UnconditionalPolicy,
    discretised_beta,
    draw_u,
    log_prob,
    select_features,
)
from tsearch.timesteps.base import (
    Draw,
    Params,
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
    entropy,
)

# The stable preset (docs/algorithms.md 1.10): a trust region on p(t), which removed every
# collapse under noise-only rewards and still followed a signal (benchmarks/adaptive_stability.py;
# lr 1e-3 alone passes that benchmark too, docs/results.md), and no update from a frozen model.
# update_every 10 with scan_stride 10 spends the paper's probe compute per image (40, full scan)
# on 4x the updates: 31 in a 20-kimg run here instead of 8.
STABLE: dict[str, Any] = {"max_tv_step": 0.05, "skip_frozen": True, "update_every": 10,
                          "scan_stride": 10}


class AdaptiveParams(Params):
    policy: Literal["cnn", "unconditional"] = "cnn"  # cnn: pi(t | x0) as the paper
    queue_size: int = Field(20, ge=2, le=10_000)  # |Q|: rows of per-timestep improvements
    num_features: int = Field(3, ge=1, le=1000)  # |S|: timesteps selected by the F-test
    update_every: int = Field(40, ge=1, le=1_000_000)  # f_S: steps between probes / policy updates
    lr: float = Field(1e-2, gt=0.0, le=1.0)  # the policy's own Adam learning rate
    entropy_coef: float = Field(1e-2, ge=0.0, le=100.0)
    # reference: L = -mean[log pi (r + c H)], H not detached (Trainer.step); bonus: a detached
    # entropy bonus L = -mean[log pi r] - c mean H, which near uniform outweighs rewards in
    # bits/dim and keeps the policy uniform.
    entropy_form: Literal["reference", "bonus"] = "reference"
    grad_clip: float = Field(1.0, gt=0.0, le=1e6)
    hidden: int = Field(256, ge=8, le=4096)  # MLP width of the policy
    depth: int = Field(2, ge=1, le=8)  # MLP hidden layers (ATS hidden_depth)
    # Head bias: Beta(softplus(b), softplus(b)) ~ uniform at init.
    init_bias: float = Field(0.5, ge=-100.0, le=100.0)
    scan_images: int = Field(1, ge=1, le=64)  # images in the all-timestep scan
    scan_stride: int = Field(1, ge=1, le=100_000)  # 1: every timestep (reference); 10: ~1/10 cost
    reward_images: int | None = Field(None, ge=1, le=65536)  # None: every image of the batch
    loss: Literal["vlb", "mse"] = "vlb"  # look-ahead loss: VLB term in bits/dim as ATS
    common_noise: bool = False  # True: same images and noise before and after the update
    baseline: bool = False  # subtract the batch-mean reward (variance reduction)
    normalize_reward: bool = False  # divide by the batch std: makes entropy_coef scale-free
    # Stabilisation switches (docs/algorithms.md 1.10), each off in the paper's code:
    # least alpha and beta (1: no endpoint spikes, a unimodal Beta)
    concentration_floor: float = Field(REFERENCE_FLOOR, ge=1e-6, le=100.0)
    uniform_mix: float = Field(0.0, ge=0.0, lt=1.0)  # t from (1 - m) pi + m U; pi's update uses it
    lr_warmup: int = Field(0, ge=0, le=1_000_000)  # policy updates over which its lr ramps to lr
    max_tv_step: float | None = Field(None, gt=0.0, le=1.0)  # trust region: TV one update may move
    skip_frozen: bool = False  # no update from a step the model did not learn (its lr was 0)
    # reference: the paper's code; stable: STABLE's switches (an explicit key still wins)
    preset: Literal["reference", "stable"] = "reference"

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "faithful" in data:
            raise ValueError(
                "faithful was replaced by explicit switches and the reference algorithm is now "
                "the default; remove it (the old `faithful: false` behaviour is common_noise: "
                "true, entropy_form: bonus, scan_stride: 10)")
        if data.get("preset") == "stable":
            data = {**STABLE, **data}
        floor = data.get("concentration_floor", REFERENCE_FLOOR)
        if isinstance(floor, int | float) and 0.5 <= floor <= 100 and "init_bias" not in data:
            # Near-uniform at init whatever the floor: softplus(b) + floor ~ 1 (+0.02).
            data = {**data, "init_bias": math.log(math.expm1(max(1.0 - floor, 0.02)))}
        return data


class AdaptiveSampler(TimestepSampler):
    """Learned non-uniform timestep sampler (docs/algorithms.md 1); changes the objective."""

    name = "adaptive"
    learned = True  # p(t) before training is only the initial policy
    Params = AdaptiveParams
    unbiased = False

    def __init__(self, schedule, params: AdaptiveParams | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        p = self.params
        self.tau_grid = torch.arange(0, self.num_timesteps, p.scan_stride)
        self.queue = torch.zeros(0, len(self.tau_grid), dtype=torch.float64)
        k = min(p.num_features, len(self.tau_grid))
        self.selected = self.tau_grid[:k].clone()  # ATS starts with S = {0, 1, 2}
        self.policy: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.in_channels: int | None = None
        self._pending: dict[str, Any] | None = None
        self._last_ab: tuple[np.ndarray, np.ndarray] | None = None
        self.updates = 0
        self.skipped = 0  # probes whose update skip_frozen dropped
        self.trust_scale = 1.0  # the last update's step after the trust region
        self.last_p_t: np.ndarray | None = None
        self._stats: dict[str, float] = {}
        self._recent: list[tuple[float, float, float]] = []  # (tv_step, reward mean, std)

    # --- policy -----------------------------------------------------------------------------
    def _build_policy(self, in_channels: int, device: torch.device) -> None:
        p = self.params
        self.in_channels = in_channels
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        try:  # initialise from our own generator, not the caller's global RNG
            if p.policy == "cnn":
                self.policy = CnnPolicy(in_channels, p.hidden, p.depth, p.init_bias,
                                        p.concentration_floor)
            else:
                self.policy = UnconditionalPolicy(p.init_bias, p.concentration_floor)
        finally:
            torch.random.set_rng_state(gen_state)
        self.policy.to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=p.lr, betas=(0.9, 0.999))

    def _policy_for(self, x0: torch.Tensor) -> nn.Module:
        """The policy, built for x0's channels on first use, on x0's device."""
        if self.policy is None:
            self._build_policy(x0.shape[1], x0.device)
        elif next(self.policy.parameters()).device != x0.device:
            self._move_policy(x0.device)  # e.g. built on the CPU by a resume, trained on CUDA
        return self.policy

    def _move_policy(self, device: torch.device) -> None:
        self.policy.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":  # Adam keeps `step` on the CPU
                    state[key] = value.to(device)

    # --- contract ---------------------------------------------------------------------------
    def sample(self, n: int, ctx: StepContext) -> Draw:
        x0 = ctx.x0 if ctx.x0 is not None else torch.zeros(n, self.in_channels or 1, 8, 8)
        x0 = x0[:n]
        policy = self._policy_for(x0)
        with torch.no_grad():
            alpha, beta = policy(x0)
        alpha, beta = alpha.float().cpu(), beta.float().cpu()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u = draw_u(alpha, beta, self.params.uniform_mix)
        u = u.clamp(1e-6, 1.0 - 1e-6)  # a deviation: keeps log pi finite (docs 1.10)
        t = torch.round(u * (self.num_timesteps - 1)).long()
        self._last_ab = (alpha.double().numpy(), beta.double().numpy())
        if self._wants_probe(ctx):
            self._pending = {"x0": x0.detach().clone(), "u": u, "step": ctx.step}
        return Draw(t=t, importance_weight=torch.ones(n))

    def _wants_probe(self, ctx: StepContext) -> bool:
        return ctx.step % self.params.update_every == 0

    def probe_request(self, ctx: StepContext) -> ProbeSpec | None:
        if not self._wants_probe(ctx) or self._pending is None:
            return None
        p = self.params
        batch = self._pending["x0"].shape[0]
        scan_idx = torch.randint(0, batch, (p.scan_images,), generator=self.generator)
        n_tau = len(self.tau_grid)
        rewarded = min(p.reward_images or batch, batch)
        s = self.selected
        t = torch.cat([self.tau_grid.repeat(p.scan_images), s.repeat(rewarded)])
        idx = torch.cat([scan_idx.repeat_interleave(n_tau),
                         torch.arange(rewarded).repeat_interleave(len(s))])
        self._pending.update({"selected": s.clone(), "rewarded": rewarded})
        return ProbeSpec(t=t, image_index=idx, kind="delta", loss=p.loss,
                         common_noise=p.common_noise)

    def observe_probe(self, result: ProbeResult, ctx: StepContext) -> None:
        pending, self._pending = self._pending, None
        if pending is None or result.after is None:
            return
        p = self.params
        delta = (result.before - result.after).double().cpu()
        n_scan = p.scan_images * len(self.tau_grid)
        scan = delta[:n_scan].view(p.scan_images, -1).mean(0)
        if self._frozen(ctx):
            return
        if torch.isfinite(scan).all():
            self.queue = torch.cat([self.queue, scan[None]])[-p.queue_size:]
        reward = delta[n_scan:].view(pending["rewarded"], -1).sum(1)
        # The new S is chosen after the reward was measured on the old S (docs/algorithms.md 1.4).
        if len(self.queue) > 1:
            self.selected = self.tau_grid[select_features(self.queue, p.num_features)]
        if torch.isfinite(reward).all():
            self.update_policy(pending["x0"][: pending["rewarded"]],
                               pending["u"][: pending["rewarded"]], reward.float())

    def _frozen(self, ctx: StepContext) -> bool:
        """The model did not learn at this step, so every improvement measured is noise."""
        if self.params.skip_frozen and ctx.lr == 0:
            self.skipped += 1
            return True
        return False

    def update_policy(self, x0: torch.Tensor, u: torch.Tensor, reward: torch.Tensor) -> None:
        """One REINFORCE step on per-image rewards for the u drawn on x0 (public: the stability
        benchmark drives the policy alone with synthetic rewards)."""
        p = self.params
        policy = self._policy_for(x0)
        device = x0.device
        alpha, beta = policy(x0)
        logp = log_prob(alpha, beta, u.to(device), p.uniform_mix)
        ent = Beta(alpha, beta).entropy()
        reward = reward.to(device)
        adv = reward - reward.mean() if p.baseline else reward
        if p.normalize_reward and len(reward) > 1:
            adv = adv / (reward.std() + 1e-12)
        if p.entropy_form == "reference":
            loss = -(logp * (adv + p.entropy_coef * ent)).mean()
        else:
            loss = -(logp * adv).mean() - p.entropy_coef * ent.mean()
        if not torch.isfinite(loss):
            return
        if p.lr_warmup:
            for group in self.optimizer.param_groups:
                group["lr"] = p.lr * min(1.0, (self.updates + 1) / p.lr_warmup)
        old = [w.detach().clone() for w in policy.parameters()] if p.max_tv_step else None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), p.grad_clip)
        self.optimizer.step()
        self.updates += 1
        before = self._p_t(alpha, beta)
        after = self._p_t(*self._no_grad(policy, x0))
        if old is not None:
            after = self._trust_region(policy, x0, old, before, after)
        self.last_p_t = after  # p(t) on these images after the update (for the benchmark)
        # How far this update moved p(t) on these images, and how far p(t) is from uniform.
        self._recent.append((_tv(after, before), float(reward.mean()),
                             float(reward.std()) if len(reward) > 1 else 0.0))
        T = self.num_timesteps
        self._stats = {
            "sampler/policy_loss": float(loss.detach()),
            "sampler/policy_entropy": float(ent.detach().mean()),
            "sampler/tv_uniform": _tv(after, np.full(T, 1.0 / T)),
        }

    @staticmethod
    def _no_grad(policy: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return policy(x0)

    def _p_t(self, alpha: torch.Tensor, beta: torch.Tensor) -> np.ndarray:
        return discretised_beta(alpha.detach().double().cpu().numpy(),
                                beta.detach().double().cpu().numpy(), self.num_timesteps,
                                self.params.uniform_mix)

    def _trust_region(self, policy: nn.Module, x0: torch.Tensor, old: list[torch.Tensor],
                      before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Shrink the update's step until it moves p(t) on these images by at most
        ``max_tv_step`` in total variation (a line search back toward the old weights).

        TV grows about linearly with a small step, so each try scales by limit / TV (at most
        halving): one or two tries, where halving alone takes up to eight."""
        limit = float(self.params.max_tv_step)
        new = [w.detach().clone() for w in policy.parameters()]
        scale = 1.0
        for _ in range(30):  # at most 2^-30 of an Adam step: the old weights to float precision
            tv = _tv(after, before)
            if tv <= limit:
                break
            scale *= min(0.5, 0.9 * limit / tv)
            with torch.no_grad():
                for w, w0, w1 in zip(policy.parameters(), old, new, strict=True):
                    w.copy_(w0 + scale * (w1 - w0))
            after = self._p_t(*self._no_grad(policy, x0))
        self.trust_scale = scale
        return after

    def probs(self) -> torch.Tensor:
        if self._last_ab is None:
            p = self.params
            a = float(nn.functional.softplus(torch.tensor(p.init_bias))) + p.concentration_floor
            ab = (np.array([a]), np.array([a]))
        else:
            ab = self._last_ab
        p = discretised_beta(ab[0], ab[1], self.num_timesteps, self.params.uniform_mix)
        return torch.from_numpy(p)

    def metrics(self) -> dict[str, float]:
        out = {"sampler/entropy": entropy(self.probs()), "sampler/updates": float(self.updates),
               "sampler/queue_len": float(len(self.queue))}
        if self._last_ab is not None:
            out["sampler/alpha_mean"] = float(self._last_ab[0].mean())
            out["sampler/beta_mean"] = float(self._last_ab[1].mean())
        for i, s in enumerate(self.selected.tolist()):
            out[f"sampler/S_{i}"] = float(s)
        out.update(self._stats)
        if self.params.skip_frozen:
            out["sampler/updates_skipped"] = float(self.skipped)
        if self.params.max_tv_step:
            out["sampler/trust_scale"] = self.trust_scale
        if self._recent:  # means over the updates since the last call (one log interval)
            tv_step, mean, std = (float(np.mean(v)) for v in zip(*self._recent, strict=True))
            out.update({"sampler/tv_step": tv_step, "sampler/reward": mean,
                        "sampler/reward_std": std,
                        "sampler/updates_in_interval": float(len(self._recent))})
            self._recent = []
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({
            "queue": self.queue.clone(), "selected": self.selected.clone(),
            "updates": self.updates, "skipped": self.skipped, "in_channels": self.in_channels,
            "stats": dict(self._stats), "recent": [list(r) for r in self._recent],
            "last_ab": None if self._last_ab is None else
            [torch.from_numpy(self._last_ab[0].copy()), torch.from_numpy(self._last_ab[1].copy())],
            "policy": None if self.policy is None else self.policy.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        })
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.queue = state["queue"].clone()
        self.selected = state["selected"].clone()
        self.updates = int(state["updates"])
        self.skipped = int(state.get("skipped", 0))  # absent in checkpoints before the switch
        self._stats = dict(state["stats"])
        self._recent = [tuple(r) for r in state.get("recent", [])]
        self._last_ab = None if state["last_ab"] is None else (
            state["last_ab"][0].numpy().copy(), state["last_ab"][1].numpy().copy())
        self._pending = None
        if state["policy"] is not None:
            gen = self.generator.get_state()  # building must not consume generator draws
            self._build_policy(int(state["in_channels"]), torch.device("cpu"))
            self.generator.set_state(gen)
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())
