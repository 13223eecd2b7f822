"""Summaries of a sampler's p(t) and a weighting's w(t), for ``tsearch timesteps show``."""

from __future__ import annotations

import numpy as np
import torch

from tsearch.timesteps.base import LossWeighting, StepContext, TimestepSampler, entropy

PROGRESS_POINTS = (0.0, 0.5, 1.0)


def profiles(sampler: TimestepSampler, n: int = 4096) -> dict[str, np.ndarray]:
    """p(t) at the start, middle and end of training (one entry if it does not change).

    The sampler is driven through ``sample`` at each progress value (with a dummy x0 batch),
    so whatever it derives from the context is what is shown.
    """
    out: dict[str, np.ndarray] = {}
    x0 = torch.zeros(min(n, 256), 1, 16, 16)
    for progress in PROGRESS_POINTS:
        sampler.sample(x0.shape[0], StepContext(step=1, kimg=0.0, progress=progress, x0=x0))
        out[f"progress {progress:g}"] = sampler.probs().double().numpy()
    first = next(iter(out.values()))
    if all(np.allclose(p, first, rtol=1e-9, atol=1e-15) for p in out.values()):
        return {"p(t)": first}
    return out


def describe(p: np.ndarray) -> dict[str, float]:
    """Entropy, the median t, and the mass on each quarter of the timesteps."""
    T = p.size
    cdf = np.cumsum(p)
    q = [float(p[i * T // 4:(i + 1) * T // 4].sum()) for i in range(4)]
    return {
        "entropy_nats": entropy(torch.from_numpy(p)),
        "max_entropy": float(np.log(T)),
        "median_t": float(np.searchsorted(cdf, 0.5)),
        "min_pT": float(p.min() * T),
        "max_pT": float(p.max() * T),
        **{f"mass_q{i + 1}": q[i] for i in range(4)},
    }


def weight_summary(weighting: LossWeighting) -> dict[str, float]:
    w = weighting.table()
    T = w.size
    at = {f"w[{t}]": float(w[t]) for t in (0, T // 10, T // 4, T // 2, 3 * T // 4, T - 1)}
    return {"min": float(w.min()), "max": float(w.max()), "mean": float(w.mean()), **at}
