"""Per-trial curve arithmetic of the report: FID and compute at each evaluation, and where a curve
reaches a target FID.

Kept apart from the grouping so the one interpolation rule (:data:`INTERPOLATION`, quoted
verbatim in every report) has one home and a closed-form test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tsearch.records import TrialRecord

INTERPOLATION = (
    "linear interpolation of FID between the two evaluations that bracket the crossing (the "
    "first evaluation at or below the target and the one before it); a seed already at or "
    "below the target at its first evaluation counts that evaluation's kimg"
)


def evaluations(record: TrialRecord) -> tuple[np.ndarray, np.ndarray]:
    """A trial's evaluation steps (images seen) and FIDs, one per step (the last logged wins,
    e.g. after a resume re-evaluated a step), sorted by step."""
    by_step = dict(record.fid)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)


def value_at(history: Sequence[tuple[int, float]], steps: np.ndarray) -> np.ndarray:
    """The logged value at or last before each step (NaN before the first log)."""
    if not history:
        return np.full(len(steps), np.nan)
    at = sorted(dict(history).items())
    logged = np.array([s for s, _ in at], dtype=np.int64)
    values = np.array([v for _, v in at], dtype=np.float64)
    idx = np.searchsorted(logged, np.asarray(steps, dtype=np.int64), side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)


def compute_at(record: TrialRecord, steps: np.ndarray) -> np.ndarray:
    """Forward-pass equivalents spent by each step: training (3 per image, as the trainer logs
    it) plus the sampler's probe forwards."""
    return value_at(record.train_forwards, steps) + value_at(record.probe_forwards, steps)


def kimg_to_target(
    kimgs: Sequence[float], fids: Sequence[float], target: float,
    compute: Sequence[float] | None = None,
) -> tuple[float | None, float | None]:
    """Training progress (and compute) at which FID first reaches ``target``, or None.

    Linear interpolation between the evaluation before the first one at or below the target and
    that one; a curve already at or below it at its first evaluation returns that evaluation.
    """
    k = np.asarray(kimgs, dtype=np.float64)
    f = np.asarray(fids, dtype=np.float64)
    c = np.full(k.shape, np.nan) if compute is None else np.asarray(compute, dtype=np.float64)
    hits = np.flatnonzero(f <= target)
    if hits.size == 0:
        return None, None
    i = int(hits[0])
    if i == 0 or not math.isfinite(f[i - 1]):
        kimg, comp = float(k[i]), float(c[i])
    else:
        frac = (f[i - 1] - target) / (f[i - 1] - f[i])
        kimg = float(k[i - 1] + frac * (k[i] - k[i - 1]))
        comp = float(c[i - 1] + frac * (c[i] - c[i - 1]))
    return kimg, (comp if math.isfinite(comp) else None)


def crossing_bracket(kimgs: Sequence[float], fids: Sequence[float], target: float,
                     compute: Sequence[float] | None = None
                     ) -> tuple[float, float, float | None, float | None] | None:
    """The kimg (and compute) interval the target crossing lies in: from the evaluation before
    the first one at or below the target to that one; from 0 when it is the first evaluation
    (the crossing is then only bounded above). None: never reached."""
    k = np.asarray(kimgs, dtype=np.float64)
    f = np.asarray(fids, dtype=np.float64)
    c = np.full(k.shape, np.nan) if compute is None else np.asarray(compute, dtype=np.float64)
    hits = np.flatnonzero(f <= target)
    if hits.size == 0:
        return None
    i = int(hits[0])

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    if i == 0 or not math.isfinite(f[i - 1]):
        return 0.0, float(k[i]), 0.0, num(c[i])
    return float(k[i - 1]), float(k[i]), num(c[i - 1]), num(c[i])


def ratio_range(base: tuple[float, float] | None, this: tuple[float, float] | None
                ) -> tuple[float, float] | None:
    """The range of base / this over the two crossing intervals (hi = inf when ``this`` may be
    at 0: the ratio is then only bounded below)."""
    if base is None or this is None or this[1] <= 0:
        return None
    hi = base[1] / this[0] if this[0] > 0 else math.inf
    return base[0] / this[1], hi


BOUND_TOLERANCE = 0.10  # a ratio known within +-10% prints alone; wider, with its range


def ratio_text(ratio: float | None, lo: float | None, hi: float | None, unit: str = "") -> str:
    """A speed-up as measured: ``3.96``, ``3.10 (2.60-3.90)`` when the evaluations bracket it
    more loosely than +-10%, or ``>= 3.96`` when it is only a lower bound (the curve was already
    at the target at its first evaluation)."""
    if ratio is None:
        return "-"
    if lo is None or hi is None:
        return f"{ratio:.2f}{unit}"
    if math.isinf(hi):
        return f">= {lo:.2f}{unit}"
    if (hi - lo) / 2 <= BOUND_TOLERANCE * ratio:
        return f"{ratio:.2f}{unit}"
    return f"{ratio:.2f}{unit} ({lo:.2f}-{hi:.2f})"


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)

