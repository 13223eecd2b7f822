"""The PNGs of `tsearch report`: FID curves and timestep distributions of one block.

The only part of the report that draws (through :mod:`tsearch.plots`, hence matplotlib); the
numbers it plots come ready-made from :mod:`tsearch.report.analysis`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsearch import plots
from tsearch.report.analysis import Block


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


@dataclass
class Figure:
    path: Path
    caption: str


def block_figures(block: Block, out_dir: Path) -> dict[str, list[Figure]]:
    """FID curves, learned-p(t) heatmaps and final p(t) profiles of one block, as PNGs."""
    figs: dict[str, list[Figure]] = {"fid": [], "heatmaps": [], "profiles": []}
    tag = _slug(block.schedule)
    series = {}
    for row in block.rows:
        stats = [s for s in row.evals if s is not None]
        if stats:
            series[row.label] = ([s.kimg for s in stats], [s.mean for s in stats],
                                 [np.nan if s.std is None else s.std for s in stats])
    path = plots.plot_fid_bands(series, out_dir / f"fid_{tag}.png",
                                title=f"FID over training, {block.schedule} schedule "
                                      "(mean ± std over seeds)")
    figs["fid"].append(Figure(path, f"FID over training, {block.schedule} schedule"))
    used: set[str] = set()
    finals = {}
    for row in block.rows:
        seed, record = next(((s, t) for s, t in zip(row.seeds, row.trials, strict=True)
                             if t.p_t), (None, None))
        if record is None:
            continue
        finals[row.label] = record.p_t[-1][1]
        if not row.learned:
            continue
        name = _slug(row.label)
        while name in used:
            name += "_"
        used.add(name)
        what = f"{row.label}, {block.schedule} schedule, seed {seed}"
        path = plots.plot_timestep_heatmap(
            [s / 1000 for s, _ in record.p_t], np.stack([p for _, p in record.p_t]),
            out_dir / f"pt_{tag}_{name}.png", title=f"learned p(t) over training: {what}")
        figs["heatmaps"].append(Figure(path, f"learned p(t) over training: {what}"))
    if finals:
        path = plots.plot_timestep_profiles(finals, out_dir / f"pt_final_{tag}.png",
                                            title=f"final p(t) of each method, {block.schedule} "
                                                  "schedule")
        figs["profiles"].append(Figure(path, f"final p(t) of each method, {block.schedule} "
                                             "schedule"))
    return figs
