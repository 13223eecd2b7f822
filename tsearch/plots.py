"""Figures for runs and searches: FID curves and learned timestep distributions.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot: no
display is needed, the global backend is left alone, and nothing is kept alive after a figure is
saved, so plotting in a loop does not leak memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 100
UNIFORM_LABEL = "p(t) x T (1 = uniform)"



_STYLES = (("-", "o"), ("--", "s"), (":", "^"))


def _series_style(i: int) -> dict:
    """Colour, line and marker of the i-th line: matplotlib's 10 colours repeat, so every 10
    lines change the dash and marker (a 14-method report must not draw two methods alike)."""
    dash, marker = _STYLES[(i // 10) % len(_STYLES)]
    return {"color": f"C{i % 10}", "linestyle": dash, "marker": marker}

def _new_figure(width: float = 8.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    fig.clear()
    return out


def _wide_range(values: np.ndarray, factor: float = 10.0) -> bool:
    """True when the positive finite values span more than ``factor``: worth a log axis."""
    pos = values[np.isfinite(values) & (values > 0)]
    return pos.size > 1 and float(pos.max()) > factor * float(pos.min())


def plot_fid_curve(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """FID against training progress, one line per run label, a marker at each evaluation.

    ``series[label] = (kimgs, fids)``. The y axis is logarithmic when the FIDs span more than
    10x, which early evaluations of an untrained model usually do.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    all_fids: list[np.ndarray] = []
    for i, (label, (kimgs, fids)) in enumerate(series.items()):
        x = np.asarray(kimgs, dtype=np.float64)
        y = np.asarray(fids, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"series {label!r}: {x.size} kimg values but {y.size} FID values")
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], y[order], markersize=4, label=str(label), **_series_style(i))
        all_fids.append(y)
    _finish_fid_axes(ax, all_fids, len(series), "FID (lower is better)", title)
    return _save(fig, path)


def _finish_fid_axes(ax, all_fids: list[np.ndarray], n_series: int, ylabel: str,
                     title: str | None) -> None:
    """Shared by the FID plots: log y over a wide range, legend unless crowded, labels."""
    if all_fids and _wide_range(np.concatenate(all_fids)):
        ax.set_yscale("log")
    if not n_series:
        ax.text(0.5, 0.5, "no evaluations", ha="center", va="center", transform=ax.transAxes)
    elif n_series <= 20:
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("training progress (kimg)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "FID over training")


def _row_edges(kimgs: np.ndarray) -> np.ndarray:
    """Cell edges around each snapshot's kimg (midpoints between neighbours)."""
    if kimgs.size == 1:
        half = max(0.5, abs(float(kimgs[0])) * 0.05)
        return np.array([kimgs[0] - half, kimgs[0] + half])
    mids = (kimgs[1:] + kimgs[:-1]) / 2
    return np.concatenate(
        [[kimgs[0] - (mids[0] - kimgs[0])], mids, [kimgs[-1] + (kimgs[-1] - mids[-1])]]
    )


def _log_ratio_norm(values: np.ndarray) -> tuple[np.ndarray, TwoSlopeNorm]:
    """log10 of p(t)*T and a diverging norm centred at 0 (uniform).

    Each side spans its own range, so a sampler that doubles a few timesteps while starving
    others by 100x still shows its peak in full colour.
    """
    floor = 1e-4
    logs = np.log10(np.clip(values, floor, None))
    finite = logs[np.isfinite(logs)]
    low = min(float(finite.min()) if finite.size else 0.0, -0.05)
    high = max(float(finite.max()) if finite.size else 0.0, 0.05)
    return logs, TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=high)


def _ratio_ticks(norm: TwoSlopeNorm) -> list[float]:
    """log10 positions of readable ratios (decades, plus 1.5/2/3/5 on a side under a decade)."""
    low, high = float(norm.vmin), float(norm.vmax)
    ticks = [float(k) for k in range(int(np.ceil(low)), int(np.floor(high)) + 1)]
    fine = np.log10([1.25, 1.5, 2.0, 3.0, 5.0])
    if sum(t > 0 for t in ticks) < 2:
        ticks += [float(f) for f in fine if f <= high]
    if sum(t < 0 for t in ticks) < 2:
        ticks += [-float(f) for f in fine if -f >= low]
    return sorted(set(ticks))


def plot_timestep_heatmap(
    kimgs: Sequence[float],
    probs: np.ndarray,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """How a sampler's p(t) evolved: x = timestep, y = kimg, colour = p(t) * T.

    The colour is log10(p(t) * T) on a diverging map centred at 1 (uniform): red where the
    sampler over-samples, blue where it under-samples; the colourbar is labelled in ratios. A
    panel below draws the first and last snapshot as lines, so a single snapshot still gives a
    readable figure.
    """
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    k = np.asarray(kimgs, dtype=np.float64).reshape(-1)
    if p.shape[0] != k.size or p.size == 0:
        raise ValueError(f"need one p(t) row per kimg: got {k.size} kimgs and probs {p.shape}")
    n_steps = p.shape[1]
    order = np.argsort(k, kind="stable")
    k, p = k[order], p[order]
    scaled = p * n_steps
    values, norm = _log_ratio_norm(scaled)

    fig = _new_figure(8.0, 6.5)
    heat, prof = fig.subplots(2, 1, height_ratios=[3, 2], sharex=True)
    x_edges = np.arange(n_steps + 1) - 0.5
    if np.all(np.diff(k) > 0):
        y_edges, y_label = _row_edges(k), "training progress (kimg)"
    else:  # repeated evaluations at one kimg (e.g. after a resume): one row per snapshot
        y_edges, y_label = np.arange(k.size + 1) - 0.5, "snapshot (repeated kimg)"
        heat.set_yticks(np.arange(k.size), [f"{v:g} kimg" for v in k])
    mesh = heat.pcolormesh(x_edges, y_edges, values, cmap="RdBu_r", norm=norm, shading="flat")
    cbar = fig.colorbar(
        mesh, ax=heat, ticks=_ratio_ticks(norm), format=FuncFormatter(lambda v, _: f"{10**v:.3g}")
    )
    cbar.set_label(UNIFORM_LABEL)
    heat.set_ylabel(y_label)
    plural = "s" if k.size != 1 else ""
    heat.set_title(title or f"timestep distribution over training ({k.size} snapshot{plural})")

    rows = [0] if k.size == 1 else [0, k.size - 1]
    for row in rows:
        prof.plot(np.arange(n_steps), scaled[row], label=f"{k[row]:g} kimg")
    prof.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform")
    if _wide_range(scaled[rows]):
        prof.set_yscale("log")
    prof.set_xlabel("timestep t")
    prof.set_ylabel(UNIFORM_LABEL)
    prof.set_xlim(-0.5, n_steps - 0.5)
    prof.legend(loc="best", fontsize="small")
    prof.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_timestep_profiles(
    profiles: Mapping[str, np.ndarray],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Several samplers' p(t) overlaid, as p(t) * T (1 = uniform) so the scale does not depend on
    T; with different T the x axis becomes t / T."""
    fig = _new_figure()
    ax = fig.add_subplot()
    rows = {label: np.asarray(p, dtype=np.float64).reshape(-1) for label, p in profiles.items()}
    same_t = len({p.size for p in rows.values()}) <= 1
    scaled_all: list[np.ndarray] = []
    for i, (label, p) in enumerate(rows.items()):
        x = np.arange(p.size) if same_t else (np.arange(p.size) + 0.5) / p.size
        scaled = p * p.size
        style = {**_series_style(i), "marker": None}
        ax.plot(x, scaled, label=str(label), **style)
        scaled_all.append(scaled)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform")
    if scaled_all and _wide_range(np.concatenate(scaled_all)):
        ax.set_yscale("log")
    if len(profiles) <= 20:
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("timestep t" if same_t else "timestep t / T (different T)")
    ax.set_ylabel(UNIFORM_LABEL)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "timestep distributions")
    return _save(fig, path)


def plot_sampler_preview(
    profiles: Mapping[str, np.ndarray],
    weights: np.ndarray,
    weighting: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """What a configuration trains on: p(t) (one curve per training progress) above w(t)."""
    fig = _new_figure(8.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for label, p in profiles.items():
        p = np.asarray(p, dtype=np.float64)
        top.plot(np.arange(p.size), p * p.size, label=str(label))
    top.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform")
    top.set_ylabel(UNIFORM_LABEL)
    top.legend(loc="best", fontsize="small")
    top.grid(True, alpha=0.3)
    top.set_title(title or "timestep sampling and loss weighting")
    w = np.asarray(weights, dtype=np.float64)
    bottom.plot(np.arange(w.size), w, color="tab:red")
    if _wide_range(w, 100.0):
        bottom.set_yscale("log")
    bottom.set_ylabel(f"loss weight w(t): {weighting}")
    bottom.set_xlabel("timestep t (0 = clean, T-1 = pure noise)")
    bottom.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_fid_bands(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Mean FID against training progress, one line per label, with a shaded +-std band.

    ``series[label] = (kimgs, means, stds)``; a NaN std (a single seed) draws no band at that
    point. The y axis is logarithmic when the FIDs span more than 10x.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    all_fids: list[np.ndarray] = []
    for i, (label, (kimgs, means, stds)) in enumerate(series.items()):
        x = np.asarray(kimgs, dtype=np.float64)
        y = np.asarray(means, dtype=np.float64)
        s = np.asarray(stds, dtype=np.float64)
        if not x.shape == y.shape == s.shape:
            raise ValueError(f"series {label!r}: {x.size} kimg values, {y.size} means and "
                             f"{s.size} stds")
        order = np.argsort(x, kind="stable")
        x, y, s = x[order], y[order], s[order]
        (line,) = ax.plot(x, y, markersize=4, label=str(label), **_series_style(i))
        band = np.isfinite(s)
        if band.any():
            ax.fill_between(x, y - np.where(band, s, 0), y + np.where(band, s, 0), where=band,
                            color=line.get_color(), alpha=0.2, linewidth=0)
        all_fids.append(y)
    _finish_fid_axes(ax, all_fids, len(series), "FID (lower is better), mean +- std over seeds",
                     title)
    return _save(fig, path)
