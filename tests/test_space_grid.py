"""Search-space algorithms without Ray: grid cells, bundles, and Optuna's random sampler."""

from __future__ import annotations

import optuna
import pytest

from tsearch.errors import ConfigError
from tsearch.search.plan import plan
from tsearch.search.space import SearchSpace
from tsearch.timesteps import load_config

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


def test_check_combinations_resolves_each_reachable_cell_once():
    from tsearch.search.space import check_combinations

    space = dict(SPACE)
    space.pop("timesteps.sampler.params.k")
    cfg = cfg_with({**space, "optim.lr": {"float": [1e-4, 1e-2], "log": True}})
    sp = SearchSpace.from_config(cfg)
    # (u: 2 schedules + p2: 1 + sp: 2 schedules) x 2 seeds x 2 ends of the lr range.
    assert check_combinations(sp, cfg.to_dict()) == (2 + 1 + 2) * 2 * 2


def test_check_combinations_past_the_cap_reaches_conditional_values():
    """Past the cap each value is tried once, with the `when` it needs made true."""
    from tsearch.search.space import check_combinations

    def space(last_t: int) -> dict:
        return {"train.seed": {"choice": list(range(10))},
                "timesteps.sampler.name": {"choice": ["uniform", "speed"]},
                "timesteps.sampler.params.tau": {"choice": [0.5, 0.7, 900],
                                                 "when": {"timesteps.sampler.name": "speed"}},
                "diffusion.num_timesteps": {"choice": [1000, last_t]}}

    cfg = cfg_with(space(950))
    sp = SearchSpace.from_config(cfg)
    assert check_combinations(sp, cfg.to_dict()) == 10 * (1 + 3) * 2
    assert check_combinations(sp, cfg.to_dict(), limit=5) < 10 * (1 + 3) * 2  # a sample
    cfg = cfg_with(space(800))
    with pytest.raises(ConfigError, match="tau = 900: timestep index 900 must be < "
                                          "diffusion.num_timesteps = 800"):
        check_combinations(SearchSpace.from_config(cfg), cfg.to_dict(), limit=5)
