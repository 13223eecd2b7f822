"""Every sampler and weighting trains 20 real steps of experiments/smoke.yaml, on both
processes (vp on the linear schedule, and flow matching)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps import SAMPLERS, WEIGHTINGS, Draw, StepContext, load_config
from tsearch.timesteps.importance import LossSecondMomentSampler
from tsearch.timesteps.weighting import VLBWeighting
from tsearch.tracker import NullTracker
from tsearch.train import train

pytestmark = pytest.mark.slow


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


PROCESS = {"vp": [], "flow": ["diffusion.schedule=flow"]}  # smoke.yaml's linear, or flow


@pytest.mark.parametrize("process", sorted(PROCESS))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_trains(tmp_path, name, process):
    extra = {"gradvar": ["timesteps.sampler.params.probe_every=5"],
             "adaptive": ["timesteps.sampler.params.update_every=5",
                          "timesteps.sampler.params.scan_stride=50"]}.get(name, [])
    tracker = run(tmp_path, f"timesteps.sampler.name={name}", *extra, *PROCESS[process])
    if name == "gradvar":
        forwards = [v for _, v in tracker.history["compute/probe_forwards"]]
        assert forwards[-1] > 0
        # 4 probes of 8 rows cover all 20 bins, so p(t) has left uniform.
        assert tracker.history["sampler/bins_measured"][-1][1] == 1.0


    if name == "adaptive":  # its look-ahead probes ran: the flow-matching or VLB reward
        assert tracker.history["compute/probe_forwards"][-1][1] > 0
        assert all(math.isfinite(v) for _, v in tracker.history["sampler/reward"])


@pytest.mark.parametrize("process", sorted(PROCESS))
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_weighting_trains(tmp_path, name, process):
    """The trainer optimises w(t) L, with the weighting's own w(t), and w(t) is not all ones.

    A recording uniform sampler keeps every step's drawn t, unweighted losses and the weighting's
    w(t) as it stood for that step (``observe`` runs before the objective and the optimizer step).
    Logging every step, each logged ``train/loss`` must be that step's mean of w(t) L (for EDM2's
    learned weighting, L e^{-u} + u with u = -log w). A weighting whose table is ones fails the
    second check; a trainer that ignores the weighting fails the first.
    """
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
                              "train.total_kimg=0.64", "train.log_every_kimg=0.032",
                              f"timesteps.weighting.name={name}", *PROCESS[process]])
    seen: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = []

    class Recording(SAMPLERS["uniform"]):
        def observe(self, draw, losses, ctx):
            seen.append((draw.t.clone(), losses.double().clone(), ctx.weighting.snapshot()))
            super().observe(draw, losses, ctx)

    d = cfg.diffusion
    sampler = Recording(NoiseSchedule.create(d.schedule, d.num_timesteps, d.variance), seed=0)
    tracker = NullTracker()
    result = train(cfg, tracker=tracker, sampler=sampler, evaluate=False)
    assert result.steps == STEPS == len(seen)
    logged = [v for _, v in tracker.history["train/loss"]]
    expected, unweighted = [], []
    for t, losses, table in seen:
        w = torch.as_tensor(table)[t]
        extra = -w.log() if name == "uncertainty" else torch.zeros_like(w)
        expected.append(float((losses * w + extra).mean()))
        unweighted.append(float(losses.mean()))
    # float32 losses and weights summed over a batch of 32: relative error well under 1e-5.
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    if name == "none":
        assert all(np.array_equal(table, np.ones_like(table)) for _, _, table in seen)
    else:  # the weighting changed what was optimised
        assert not np.allclose(expected, unweighted, rtol=1e-4)


def test_lsm_with_vlb_learns_from_the_weighted_loss(tmp_path):
    """A real run: the trainer hands lsm the weighting; its FIFOs hold w(t) times the losses."""

    class Recording(LossSecondMomentSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = []

        def observe(self, draw, losses, ctx):
            self.seen.append((draw.t.clone(), losses.clone(), ctx.weighting))
            super().observe(draw, losses, ctx)

    T = 50  # 20 steps of 32 fill every t's history of 1, so p(t) leaves uniform mid-run
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
                              f"diffusion.num_timesteps={T}", "timesteps.sampler.name=lsm",
                              "timesteps.sampler.params.history=1",
                              "timesteps.weighting.name=vlb", "train.total_kimg=0.64"])
    schedule = NoiseSchedule.create("linear", T)
    params = LossSecondMomentSampler.Params(history=1)
    sampler = Recording(schedule, params, seed=0)
    result = train(cfg, tracker=NullTracker(), sampler=sampler, evaluate=False, max_steps=STEPS)
    assert result.steps == STEPS and len(sampler.seen) == STEPS
    assert sampler.warmed_up()
    p = sampler.probs()
    assert bool(torch.isfinite(p).all()) and float(p.max() / p.min()) > 2
    weighting = sampler.seen[0][2]
    assert isinstance(weighting, VLBWeighting)
    # Replaying the unweighted losses times w(t) into a plain FIFO gives the same state.
    replay = LossSecondMomentSampler(schedule, params, seed=0)
    unweighted = LossSecondMomentSampler(schedule, params, seed=0)
    bare = StepContext(step=0, kimg=0.0, progress=0.0)
    for t, losses, w in sampler.seen:
        assert w is weighting
        draw = Draw(t=t, importance_weight=torch.ones(len(t)))
        replay.observe(draw, (losses.double() * weighting.weights(t).double()), bare)
        unweighted.observe(draw, losses, bare)
    torch.testing.assert_close(sampler.state_dict()["history"], replay.state_dict()["history"],
                               rtol=1e-12, atol=0)
    assert not torch.allclose(sampler.probs(), unweighted.probs())


def test_gradvar_trains_with_a_weighting(tmp_path):
    tracker = run(tmp_path, "timesteps.sampler.name=gradvar",
                  "timesteps.sampler.params.probe_every=5", "timesteps.weighting.name=vlb")
    assert tracker.history["sampler/bins_measured"][-1][1] == 1.0
