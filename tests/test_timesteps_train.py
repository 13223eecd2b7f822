"""Every new sampler and weighting trains 20 real steps of experiments/smoke.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tsearch.config import load_config
from tsearch.tracker import NullTracker
from tsearch.train import train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
STEPS = 20  # 0.64 kimg at batch 32


def run(tmp_path: Path, *overrides: str):
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/cache",
                              "train.total_kimg=0.64", "eval.every_kimg=0.32", *overrides])
    tracker = NullTracker()
    result = train(cfg, tracker=tracker, evaluate=False)
    assert result.steps == STEPS
    history = tracker.history
    for key in ("train/loss", "sampler/entropy"):
        values = [v for _, v in history[key]]
        assert values and all(math.isfinite(v) for v in values), key
    pt = np.load(result.run_dir / "timesteps.npz")
    assert pt["probs"].shape == (2, 1000)  # snapshots at 0.32 and 0.64 kimg
    np.testing.assert_allclose(pt["probs"].sum(axis=1), 1.0, atol=1e-9)
    return tracker


@pytest.mark.parametrize("name", ["lsm", "gradvar", "lognormal", "speed", "curriculum"])
def test_sampler_trains(tmp_path, name):
    extra = ["timesteps.sampler.params.probe_every=5"] if name == "gradvar" else []
    tracker = run(tmp_path, f"timesteps.sampler.name={name}", *extra)
    if name == "gradvar":
        forwards = [v for _, v in tracker.history["compute/probe_forwards"]]
        assert forwards[-1] > 0
        # 4 probes of 8 rows cover all 20 bins, so p(t) has left uniform.
        assert tracker.history["sampler/bins_measured"][-1][1] == 1.0


@pytest.mark.parametrize("name", ["vlb", "p2", "min_snr", "speed"])
def test_weighting_trains(tmp_path, name):
    run(tmp_path, f"timesteps.weighting.name={name}")
