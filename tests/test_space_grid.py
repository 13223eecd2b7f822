"""Search-space algorithms without Ray: grid cells, bundles, and Optuna's random sampler."""

from __future__ import annotations

import optuna
import pytest

from tsearch.config import load_config
from tsearch.errors import ConfigError
from tsearch.search.space import SearchSpace
from tsearch.search.tuner import plan

SPACE = {
    "method": {"bundle": {"u": {"timesteps.sampler.name": "uniform"},
                          "p2": {"timesteps.sampler.name": "uniform",
                                 "timesteps.weighting.name": "p2"},
                          "sp": {"timesteps.sampler.name": "speed"}}},
    "diffusion.schedule": {"choice": ["linear", "cosine"], "when": {"method": ["u", "sp"]}},
    "timesteps.sampler.params.k": {"choice": [2.0, 5.0],
                                   "when": {"timesteps.sampler.name": "speed"}},
    "train.seed": {"choice": [1, 2]},
}


def cfg_with(space, **search):
    return load_config(None, [f"search.space={space}",
                              *(f"search.{k}={v}" for k, v in search.items())])


def test_grid_enumerates_the_pruned_tree_once():
    # `when` on the expanded sampler name needs it searched: list it explicitly.
    space = dict(SPACE)
    space.pop("timesteps.sampler.params.k")
    cfg = cfg_with(space, algorithm="grid")
    checked = plan(cfg, None)
    cells = checked.space.grid()
    assert checked.num_trials == len(cells) == (2 + 1 + 2) * 2
    assert cells[0] == {"method": "u", "timesteps.sampler.name": "uniform",
                        "diffusion.schedule": "linear", "train.seed": 1}
    p2 = [c for c in cells if c["method"] == "p2"]
    assert p2 == [{"method": "p2", "timesteps.sampler.name": "uniform",
                   "timesteps.weighting.name": "p2", "train.seed": s} for s in (1, 2)]
    assert len({tuple(sorted(c.items())) for c in cells}) == len(cells)


def test_grid_refuses_ranges_and_points():
    with pytest.raises(ConfigError, match="optim.lr: search.algorithm = grid needs choice"):
        plan(cfg_with({"optim.lr": {"float": [1e-4, 1e-3]}}, algorithm="grid"), None)
    cfg = load_config(None, ["search.space={train.seed: {choice: [1, 2]}}",
                             "search.algorithm=grid",
                             "search.points_to_evaluate=[{train.seed: 1}]"])
    with pytest.raises(ConfigError, match="points_to_evaluate"):
        plan(cfg, None)


@pytest.mark.parametrize("bundle,needle", [
    ({"a": {"optim.lrr": 1.0}}, "bundle.a"),
    ({"a": {"timesteps.sampler.name": "nope"}}, "bundle.a"),
])
def test_bad_bundles_are_one_line_config_errors(bundle, needle):
    with pytest.raises(ConfigError, match=needle):
        plan(cfg_with({"method": {"bundle": bundle}}), None)


def test_bundle_label_must_not_be_a_config_field():
    with pytest.raises(ConfigError, match="label of its own"):
        plan(cfg_with({"optim.lr": {"bundle": {"a": {"optim.lr": 0.1}}}}), None)


def test_define_by_run_returns_what_the_bundle_sets():
    sp = SearchSpace.from_config(cfg_with({k: SPACE[k] for k in ("method", "train.seed")}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        constants = sp.define_by_run()(trial)
        assert constants == SPACE["method"]["bundle"][trial.params["method"]]
        seen.add(trial.params["method"])
    assert seen == {"u", "p2", "sp"}


def test_random_algorithm_is_reproducible_and_inside_the_space():
    sp = SearchSpace.from_config(cfg_with({
        "optim.lr": {"float": [1e-4, 1e-2], "log": True},
        "timesteps.sampler.name": {"choice": ["uniform", "speed"]},
        "timesteps.sampler.params.k": {"float": [2.0, 8.0],
                                       "when": {"timesteps.sampler.name": "speed"}}}))

    def draws(seed):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        out = []
        for _ in range(12):
            trial = study.ask()
            sp.define_by_run()(trial)
            out.append(dict(trial.params))
        return out

    a, b, c = draws(7), draws(7), draws(8)
    assert a == b and a != c
    for p in a:
        assert 1e-4 <= p["optim.lr"] <= 1e-2
        assert ("timesteps.sampler.params.k" in p) == (p["timesteps.sampler.name"] == "speed")
