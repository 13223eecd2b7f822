"""Does the learned sampler's policy stay stable on rewards like the ones it gets here?

The policy alone (``AdaptiveSampler.update_policy``: the real REINFORCE step, CNN policy and
switches), no diffusion model: each update draws t for a batch of 64 digits images and is given
a synthetic per-image reward of the size measured in real runs (docs/algorithms.md 1.9: std
0.33-0.47 bits/dim around a mean of -0.05..0.1 under fresh noise), either

- ``noise``: N(0.02, 0.4^2) per image, nothing to learn; or
- ``signal``: the same noise plus 0.4 (one noise sd) when the drawn u lies in [0.2, 0.4].

Per setting, 20 seeds x 64 updates, read after 8, 32 and 64 (the first k updates of a run are a
k-update run): a 20-kimg run here has 312 steps, so 8 updates at ``update_every`` 40 (the
paper's), 32 at 10, 64 at 5.
Reported: the seeds whose p(t) entropy (nats; uniform is ln 1000 = 6.9) fell below 1 at any
update (of the policy's Beta alone, so that a uniform mixture cannot hide a collapsed policy),
and for ``signal`` the mass p(t) moved into the rewarded region (a lower bound on the TV moved
toward the signal).

    python benchmarks/adaptive_stability.py [--seeds 20] [--updates 64]
        # -> benchmarks/results/adaptive_stability.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.config.schema import DataConfig  # noqa: E402
from tsearch.data.datasets import load_images  # noqa: E402
from tsearch.diffusion.schedule import NoiseSchedule  # noqa: E402
from tsearch.timesteps.adaptive import AdaptiveParams, AdaptiveSampler  # noqa: E402
from tsearch.timesteps.adaptive_policy import discretised_beta  # noqa: E402
from tsearch.timesteps.base import StepContext  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "preset stable": {"preset": "stable"},  # trust 0.05 (skip_frozen: no effect here)
    "reference": {},
    "lr 1e-3": {"lr": 1e-3},
    "floor 1": {"concentration_floor": 1.0},
    "mix 0.1": {"uniform_mix": 0.1},
    "warm-up 8": {"lr_warmup": 8},
    "trust 0.02": {"max_tv_step": 0.02},
    "floor 1 + trust 0.05": {"concentration_floor": 1.0, "max_tv_step": 0.05},
}
NOISE_MEAN, NOISE_SD, SIGNAL = 0.02, 0.4, 0.4
REGION = (0.2, 0.4)  # of u = t / (T - 1)
BATCH = 64


def entropy(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def region_mass(p: np.ndarray) -> float:
    t = np.arange(len(p)) / (len(p) - 1)
    return float(p[(t >= REGION[0]) & (t <= REGION[1])].sum())


def run(params: dict[str, Any], seed: int, updates: int, signal: bool,
        images: torch.Tensor) -> dict[str, Any]:
    """One policy on one seed: entropy and region mass of its Beta's p(t) after each update."""
    sampler = AdaptiveSampler(NoiseSchedule.create("linear"),
                              AdaptiveParams(**params, update_every=1), seed=seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    uniform = discretised_beta(np.array([1.0]), np.array([1.0]), 1000)
    rows = []
    for step in range(updates):
        x0 = images[torch.randint(0, len(images), (BATCH,), generator=gen)]
        sampler.sample(BATCH, StepContext(step=step, kimg=0.0, progress=0.0, lr=1e-3, x0=x0))
        u = sampler._pending["u"]
        reward = NOISE_MEAN + NOISE_SD * torch.randn(BATCH, generator=gen)
        if signal:
            reward = reward + SIGNAL * ((u >= REGION[0]) & (u <= REGION[1])).float()
        sampler.update_policy(x0, u, reward)
        m = sampler.params.uniform_mix  # the policy's own Beta: the drawn p(t) minus m U
        p = (sampler.last_p_t - m * uniform) / (1.0 - m)
        rows.append((entropy(np.clip(p, 0.0, None)), region_mass(p),
                     0.5 * float(np.abs(p - uniform).sum())))
    return {"entropy": [r[0] for r in rows], "region": [r[1] for r in rows],
            "tv_uniform": [r[2] for r in rows]}


def summarise(runs: list[dict[str, Any]], upto: int, start_mass: float) -> dict[str, Any]:
    collapsed = sum(min(r["entropy"][:upto]) < 1.0 for r in runs)
    moved = [r["region"][upto - 1] - start_mass for r in runs]
    return {"collapsed": collapsed, "seeds": len(runs),
            "tv_uniform_median": statistics.median(r["tv_uniform"][upto - 1] for r in runs),
            "min_entropy_median": statistics.median(min(r["entropy"][:upto]) for r in runs),
            "region_gain_median": statistics.median(moved),
            "region_gain_q25": float(np.percentile(moved, 25)),
            "region_gain_q75": float(np.percentile(moved, 75))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--updates", type=int, default=64)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "adaptive_stability.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = load_images(DataConfig(name="digits"), "train")
    start_mass = region_mass(discretised_beta(np.array([1.0]), np.array([1.0]), 1000))
    # 8: a 20-kimg run at update_every 40; 32: at 10 (the stable preset); 64: at 5
    checkpoints = sorted({min(k, args.updates) for k in (8, 32)} | {args.updates})
    out: dict[str, Any] = {"benchmark": "adaptive_stability", "seeds": args.seeds,
                           "noise": {"mean": NOISE_MEAN, "sd": NOISE_SD},
                           "signal": {"bonus": SIGNAL, "region_u": REGION},
                           "settings": {}}
    for name in args.settings.split(","):
        start = time.perf_counter()
        row: dict[str, Any] = {"params": SETTINGS[name]}
        for kind in ("noise", "signal"):
            runs = [run(SETTINGS[name], s, args.updates, kind == "signal", images)
                    for s in range(args.seeds)]
            row[kind] = {str(k): summarise(runs, k, start_mass) for k in checkpoints}
        row["seconds_per_seed"] = (time.perf_counter() - start) / (2 * args.seeds)
        out["settings"][name] = row
        cells = "  ".join(
            f"{k}: collapsed {row['noise'][str(k)]['collapsed']}/{args.seeds} "
            f"gain {row['signal'][str(k)]['region_gain_median']:+.3f}" for k in checkpoints)
        print(f"{name:<22} {cells}  ({row['seconds_per_seed']:.1f} s/seed)", flush=True)
    out["command"] = "python benchmarks/adaptive_stability.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
