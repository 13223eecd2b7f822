"""Plots are written as real PNG files that open and have a sensible size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsearch.plots import plot_fid_curve, plot_timestep_heatmap, plot_timestep_profiles


def _check_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 400 <= width <= 2000 and 300 <= height <= 2000


def _profile(n_steps: int, sharpness: float) -> np.ndarray:
    p = np.exp(-sharpness * ((np.arange(n_steps) / n_steps) - 0.4) ** 2)
    return p / p.sum()


def test_fid_curve(tmp_path: Path) -> None:
    series = {
        "uniform": ([1.0, 2.0, 3.0, 4.0], [350.0, 120.0, 40.0, 22.0]),  # > 10x: log axis
        "importance": ([1.0, 2.0, 3.0], [300.0, 90.0, float("nan")]),
    }
    out = plot_fid_curve(series, tmp_path / "new" / "dir" / "fid.png", title="FID")
    assert out == tmp_path / "new" / "dir" / "fid.png"
    _check_png(out)
    _check_png(plot_fid_curve({}, tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="kimg values"):
        plot_fid_curve({"bad": ([1.0, 2.0], [3.0])}, tmp_path / "bad.png")


@pytest.mark.parametrize("n_snapshots", [1, 5])
def test_timestep_heatmap(tmp_path: Path, n_snapshots: int) -> None:
    kimgs = np.linspace(0.0, 20.0, n_snapshots)
    probs = np.stack([_profile(100, 1.0 + 10.0 * i) for i in range(n_snapshots)])
    out = plot_timestep_heatmap(kimgs, probs, tmp_path / f"heat{n_snapshots}.png")
    _check_png(out)


def test_timestep_heatmap_handles_uniform_and_repeated_kimg(tmp_path: Path) -> None:
    uniform = np.full((3, 50), 1 / 50)
    _check_png(plot_timestep_heatmap([0.0, 5.0, 5.0], uniform, tmp_path / "u.png"))
    with pytest.raises(ValueError, match="one p\\(t\\) row per kimg"):
        plot_timestep_heatmap([0.0], uniform, tmp_path / "bad.png")


def test_timestep_profiles(tmp_path: Path) -> None:
    profiles = {
        "uniform": np.full(100, 0.01),
        "lognormal": _profile(100, 40.0),
        "coarse": _profile(20, 5.0),  # another T still compares as p(t) * T
    }
    _check_png(plot_timestep_profiles(profiles, tmp_path / "profiles.png", title="samplers"))


def test_plotting_in_a_loop_keeps_no_figures(tmp_path: Path) -> None:
    import gc

    from matplotlib.figure import Figure

    for i in range(5):
        plot_fid_curve({"a": ([1.0, 2.0], [10.0, 5.0])}, tmp_path / f"{i}.png")
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Figure)]


def test_up_to_30_lines_are_drawn_alike_by_none() -> None:
    from tsearch.plots import _series_style

    styles = [tuple(sorted(_series_style(i).items())) for i in range(30)]
    assert len(set(styles)) == 30  # the replication report has 14 rows in one block
