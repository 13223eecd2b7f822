"""Searches replayed against a surrogate (benchmarks/replay.py): the real Tuner, searcher and
ASHA, with learning curves from an arranged surrogate instead of training.

The arranged curves make ASHA's decisions known: the points are tried best first, so every later
one is worse than all recorded at the first rung and is stopped there; the charged trial-kimg is
then one full trial plus one rung per stopped trial.
"""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from tsearch.timesteps import load_config

sys.path.insert(0, str(ROOT))
from benchmarks.replay import (  # noqa: E402
    CurveTable,
    charged_kimg,
    eval_points,
    replay_search,
    values_key,
)

pytestmark = pytest.mark.slow
LRS = [2.0e-3, 1.6e-3, 1.3e-3, 1.0e-3, 8.0e-4, 6.0e-4]  # best first: FID grows as lr shrinks


def arranged(seeds=(0, 1)) -> CurveTable:
    """FID falls as 1/kimg from (30 + 10 x gap) at 20 kimg, gap = |lr - 2e-3| x 1e4 (0 for the
    best lr, 14 for the worst); seed s subtracts 0.1 s (so a repeat of the best on seed 1 is
    promoted at every rung: it is better than everything recorded there)."""
    curves = {}
    for lr in LRS:
        gap = abs(lr - 2.0e-3) * 1e4
        curves[values_key({"optim.lr": lr})] = {
            s: [(k, (30.0 + 10 * gap) * 20.0 / k - 0.1 * s) for k in (4.0, 12.0, 20.0)]
            for s in seeds}
    return CurveTable(curves)


@pytest.fixture(scope="module")
def ray_session():
    from tsearch.search.ray_runtime import end_session, init_ray, shutdown_ray

    session = init_ray(None, num_cpus=2)
    yield
    end_session(session) if session is not None else shutdown_ray()


def _cfg(*extra: str):
    return load_config(ROOT / "experiments" / "quickstart.yaml", [
        "search.algorithm=random", "search.seed_with_defaults=false",
        "search.space={optim.lr: {float: [5.0e-4, 4.0e-3], log: true}}",
        "search.points_to_evaluate=[" + ", ".join(f"{{optim.lr: {lr}}}" for lr in LRS) + "]",
        "search.max_concurrent=1", *extra])


def test_the_replay_runs_the_real_tuner_with_asha_and_charges_kimg(ray_session, tmp_path):
    cfg = _cfg()
    assert eval_points(cfg) == [4.0, 12.0, 20.0]  # the quickstart's rungs and its end
    events, trials = replay_search(cfg, arranged(), seed=0, num_samples=len(LRS),
                                   storage=tmp_path)
    assert sorted(v["optim.lr"] for v in trials.values()) == sorted(LRS)
    reached = {}
    for _, trial, kimg, _ in events:
        reached[trial] = max(reached.get(trial, 0.0), kimg)
    by_lr = {trials[t]["optim.lr"]: k for t, k in reached.items()}
    # The best ran to the end; every later point was worse at 4 kimg than all before it.
    assert by_lr == {2.0e-3: 20.0, **{lr: 4.0 for lr in LRS[1:]}}
    assert charged_kimg(events) == pytest.approx(20.0 + 4.0 * (len(LRS) - 1))
    fids = sorted(f for _, t, k, f in events if trials[t]["optim.lr"] == 2.0e-3)
    assert fids == pytest.approx([30.0, 30.0 * 20 / 12, 30.0 * 20 / 4])  # seed 0: no offset


def test_a_replayed_repeat_runs_on_its_seed(ray_session, tmp_path):
    cfg = _cfg("search.repeat_top=[1]")
    events, trials = replay_search(cfg, arranged(), seed=0, num_samples=len(LRS) + 1,
                                   storage=tmp_path)
    repeats = [t for t, v in trials.items() if v.get("train.seed") == 1]
    assert len(repeats) == 1 and trials[repeats[0]]["optim.lr"] == 2.0e-3
    final = [f for _, t, k, f in events if t == repeats[0] and k == 20.0]
    assert final == [pytest.approx(30.0 - 0.1)]  # the surrogate saw the repeat's seed
