"""Every bad value is one stderr line, exit 2, no traceback (issue 12).

Each case runs the real CLI in-process on a config written to a temporary directory, with
``--dry-run`` so that nothing trains and no Ray starts: the checks run at load and plan time.
Fragments name the offending key (or file), so a case fails if the check goes missing and the
value is caught later by something else.
"""

from __future__ import annotations

import pytest
import torch
from cli_harness import assert_one_line, run_cli

from tsearch.config import load_config
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps.registry import build_sampler, build_weighting
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.weighting import SpeedWeighting

# A tiny valid config: the model builds in well under a second for --dry-run.
BASE = """\
data: {name: digits, resolution: 8}
model: {channels: [16, 32], attention: [false, false]}
diffusion: {num_timesteps: 1000}
train: {total_kimg: 0.4, batch_size: 32, log_every_kimg: 0.1}
eval: {every_kimg: 0.2, num_images: 200, steps: 10}
search:
  num_samples: 2
  asha: {grace_kimg: 0.2}
"""
SPACE = "  space:\n"


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(BASE + SPACE + "    optim.lr: {float: [1.0e-4, 1.0e-2]}\n")
    return tmp_path


def test_the_base_config_is_valid(here, capfd):
    """The cases below fail because of their one bad value, not because of the base."""
    assert run_cli(capfd, "train", "c.yaml", "--dry-run").code == 0
    assert run_cli(capfd, "search", "c.yaml", "--dry-run").code == 0


# --- 1, 2, 6. Finite, bounded fields; names (train --dry-run with one override) ---------------

SET_CASES = [
    ("train.total_kimg=.inf", "train.total_kimg", "finite"),
    ("eval.every_kimg=.inf", "eval.every_kimg", "finite"),
    ("train.log_every_kimg=.inf", "train.log_every_kimg", "finite"),
    ("search.asha.grace_kimg=.inf", "search.asha.grace_kimg", "finite"),
    ("optim.warmup_kimg=.inf", "optim.warmup_kimg", "finite"),
    ("optim.momentum_decay.kimg=.inf", "optim.momentum_decay.kimg", "finite"),
    ("search.cpus_per_trial=.inf", "search.cpus_per_trial", "finite"),
    ("search.gpus_per_trial=.inf", "search.gpus_per_trial", "finite"),
    ("optim.grad_clip=.nan", "optim.grad_clip", "finite"),
    ("train.total_kimg=1e300", "train.total_kimg", "10^9 images"),
    ("train.total_kimg=2.0e+6", "train.total_kimg", "at most 1e+06 kimg"),
    ("eval.seed=18446744073709551616", "eval.seed", "9223372036854775807"),
    ("train.seed=9223372036854775808", "train.seed", "9223372036854775807"),
    ("eval.seed=9223372036854775700", "eval.seed", "2^63-1"),  # + 199th image overflows
    ("search.seed=4294967296", "search.seed", "4294967295"),  # Optuna seeds numpy (32 bit)
    ("optim.lr=5", "optim.lr", "less than or equal to 1"),
    ("data.limit=100000000000000000000", "data.limit", "less than or equal"),
    ("eval.num_images=10000000000000", "eval.num_images", "less than or equal"),
    ("model.channels=[100000000, 32]", "model.channels.0", "less than or equal"),
    ("search.num_samples=1000000000000", "search.num_samples", "less than or equal"),
    ("search.max_concurrent=1000000000", "search.max_concurrent", "less than or equal"),
    ("train.threads=1000000000", "train.threads", "less than or equal"),
    ("search.name=../../X", "search.name", "not a safe name"),
    ("tracking.run_name=../../../X", "tracking.run_name", "not a safe name"),
]


@pytest.mark.parametrize("override,key,why", SET_CASES, ids=[c[0][:40] for c in SET_CASES])
def test_bad_value_is_one_line(here, capfd, override, key, why):
    result = run_cli(capfd, "train", "c.yaml", "--dry-run", "--set", override)
    assert_one_line(result, f"{key} = ", why)


PLUGIN_CASES = [
    (["timesteps.sampler.name=speed", "timesteps.sampler.params.k=.inf"],
     "timesteps.sampler.params.k", "finite"),
    (["timesteps.weighting.name=p2", "timesteps.weighting.params.k=.nan"],
     "timesteps.weighting.params.k", "finite"),
    (["timesteps.sampler.name=adaptive", "timesteps.sampler.params.init_bias=.inf"],
     "timesteps.sampler.params.init_bias", "finite"),
    (["timesteps.sampler.name=gradvar", "timesteps.sampler.params.bins=2000"],
     "timesteps.sampler.params.bins = 2000", "diffusion.num_timesteps = 1000"),
    # 4. SpeeD's tau against T: the exact failure of issue 12 (an index meant for T = 1000).
    (["timesteps.sampler.name=speed", "timesteps.sampler.params.tau=700",
      "diffusion.num_timesteps=100"],
     "timesteps.sampler.params.tau = 700", "diffusion.num_timesteps = 100"),
    (["timesteps.sampler.name=speed", "timesteps.sampler.params.tau=1.0"],
     "timesteps.sampler.params.tau = 1.0", "must be < diffusion.num_timesteps = 1000"),
    (["timesteps.weighting.name=speed", "timesteps.weighting.params.tau=2000"],
     "timesteps.weighting.params.tau = 2000", "diffusion.num_timesteps = 1000"),
    (["timesteps.sampler.name=speed", "timesteps.sampler.params.tau=700.5"],
     "timesteps.sampler.params.tau", "whole number"),
]


@pytest.mark.parametrize("overrides,key,why", PLUGIN_CASES,
                         ids=[c[0][-1][:40] for c in PLUGIN_CASES])
def test_bad_plugin_value_is_one_line(here, capfd, overrides, key, why):
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert_one_line(run_cli(capfd, "train", "c.yaml", "--dry-run", *sets), key, why)


# --- 3. Search ranges, choices and their combinations (search --dry-run) ---------------------

SPACE_CASES = [
    ("optim.lr: {float: [2.0, 5.0]}", "search.space.optim.lr", "less than or equal to 1"),
    ("optim.lr: {float: [0.1, .inf]}", "search.space.optim.lr", "finite"),
    ("optim.grad_clip: {float: [0.1, .inf]}", "search.space.optim.grad_clip", "finite"),
    ("optim.grad_clip: {choice: [1.0, .inf]}", "search.space.optim.grad_clip", "inf"),
    ("train.batch_size: {int: [8, 64], step: 2.5}", "search.space.train.batch_size",
     "whole step"),
    ("train.batch_size: {float: [8, 64]}", "search.space.train.batch_size", "valid integer"),
    ("train.batch_size: {int: [8, 64], log: true, step: 2}", "search.space.train.batch_size",
     "cannot be combined with log"),
    ("optim.lr: {float: [0.0, 0.1], log: true}", "search.space.optim.lr", "positive range"),
    ("train.batch_size: {choice: [32, -1]}", "search.space.train.batch_size", "value -1"),
    ("timesteps.sampler.params.tau: {float: [500, 900]}\n"  # proposes 627.3 as an index
     "timesteps: {sampler: {name: speed}}",
     "search.space.timesteps.sampler.params.tau", "whole number"),
    # Values that are only wrong together: every combination is resolved before Ray starts.
    ("timesteps.sampler.name: {choice: [uniform, speed]}\n"
     "    timesteps.sampler.params.tau: {choice: [0.7, 700], when: {timesteps.sampler.name: "
     "speed}}\n"
     "    diffusion.num_timesteps: {choice: [1000, 100]}",
     "search.space combination", "timesteps.sampler.params.tau = 700"),
    ("diffusion.num_timesteps: {int: [5, 1000]}", "search.space combination",
     "eval.steps=10 exceeds diffusion.num_timesteps=5"),
    ("timesteps.sampler.name: {choice: [uniform, gradvar]}\n"
     "    timesteps.sampler.params.bins: {int: [10, 50], when: {timesteps.sampler.name: "
     "gradvar}}\n"
     "    diffusion.num_timesteps: {choice: [1000, 20]}",
     "search.space combination", "timesteps.sampler.params.bins = 50"),
]


@pytest.mark.parametrize("space,key,why", SPACE_CASES, ids=[c[0][:40] for c in SPACE_CASES])
def test_bad_search_space_is_refused_at_plan_time(here, capfd, space, key, why):
    (here / "s.yaml").write_text(BASE + SPACE + f"    {space}\n")
    assert_one_line(run_cli(capfd, "search", "s.yaml", "--dry-run"), key, why)


def test_combinations_beyond_the_cap_still_check_every_value(here, capfd):
    """100 x 100 x 2 combinations: past the cap each value is still resolved once."""
    seeds = list(range(100))
    space = (f"    train.seed: {{choice: {seeds}}}\n    eval.seed: {{choice: {seeds}}}\n"
             "    diffusion.num_timesteps: {choice: [1000, 5]}\n")
    (here / "s.yaml").write_text(BASE + SPACE + space)
    assert_one_line(run_cli(capfd, "search", "s.yaml", "--dry-run"),
                    "search.space combination", "diffusion.num_timesteps=5")


def test_speed_defaults_search_over_T(here, capfd):
    """tau as a fraction of T: one SpeeD config is valid for every searched T."""
    space = ("    timesteps.sampler.name: {choice: [uniform, speed]}\n"
             "    diffusion.num_timesteps: {choice: [20, 1000, 4000]}\n")
    (here / "s.yaml").write_text(BASE + SPACE + space)
    result = run_cli(capfd, "search", "s.yaml", "--dry-run",
                     "--set", "timesteps.weighting.name=speed")
    assert result.code == 0, result.err


# --- 5. YAML files and override values ---------------------------------------------------------

# A "billion laughs": 7 lines that stand for 10^7 values once the aliases are expanded.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [" + ", ".join([f"*{a}"] * 10) + "]\n"
    for a, b in zip("abcdef", "bcdefg", strict=True))

FILE_CASES = [
    ("binary", bytes(range(256)) * 8, "not UTF-8"),
    ("recursive-alias", b"a: &a [*a]\n", "recursive alias"),
    ("recursive-in-section", b"train: &t {seed: *t}\n", "recursive alias"),
    ("billion-laughs", LAUGHS.encode(), "expands to more than"),
    ("top-level-list", b"- train\n- eval\n", "mapping of sections"),
    ("top-level-scalar", b"just text\n", "mapping of sections"),
    ("empty", b"", "is empty"),
    ("only-comments", b"# nothing yet\n\n", "is empty"),
    ("deeply-nested", b"train: " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
    ("nul-byte", b"train: {seed: 1}\x00\n", "not valid YAML"),
    ("huge-integer", b"train: {seed: " + b"9" * 5000 + b"}\n", "cannot be read"),
    ("non-string-key", b"1: 2\n", "top-level key 1"),
]


@pytest.mark.parametrize("content,why", [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_one_line(here, capfd, content, why):
    (here / "bad.yaml").write_bytes(content)
    assert_one_line(run_cli(capfd, "train", "bad.yaml", "--dry-run"), "'bad.yaml'", why)


def test_small_aliases_still_work(here, capfd):
    (here / "a.yaml").write_text(BASE + "tracking: &t {experiment: shared}\n")
    assert run_cli(capfd, "train", "a.yaml", "--dry-run").code == 0


OVERRIDE_CASES = [
    ("train.seed=&a [*a]", "recursive alias"),
    ("train.seed=[1, 2", "not valid YAML"),
    ("train.seed=*nope", "undefined alias"),
    ("train.seed=" + "9" * 5000, "cannot be read"),
    ("train.seed=!!python/object:os.system {}", "not valid YAML"),
]


@pytest.mark.parametrize("override,why", OVERRIDE_CASES, ids=[c[0][:24] for c in OVERRIDE_CASES])
def test_bad_override_value_is_one_line(here, capfd, override, why):
    result = run_cli(capfd, "train", "c.yaml", "--dry-run", "--set", override)
    assert_one_line(result, "override 'train.seed=", why)
    assert len(result.err) < 400  # a 5000-digit value is not echoed back in full


# --- 4. SpeeD: the defaults are SpeeD's constants at T = 1000, and valid at any T -------------


@pytest.mark.parametrize("schedule", ["linear", "quad", "cosine"])
def test_speed_fraction_defaults_equal_the_absolute_form_at_T_1000(schedule):
    """tau = 0.7 and the 1000/T threshold rescaling change nothing at T = 1000."""
    sch = NoiseSchedule.create(schedule, num_timesteps=1000)
    relative, absolute = SpeedSampler(sch, seed=5), SpeedSampler(sch, SpeedSampler.Params(tau=700),
                                                                 seed=5)
    assert relative.tau == absolute.tau == 700
    assert relative.pivot == absolute.pivot == min(max(sch.meaningful_steps(1e-4), 1), 999)
    k, T, tau = 5.0, 1000, 700
    expected = torch.full((T,), 1 / (T + tau * (k - 1)), dtype=torch.float64)
    expected[:tau] = k / (T + tau * (k - 1))
    assert torch.equal(relative.base_probs(), absolute.base_probs())
    torch.testing.assert_close(relative.base_probs(), expected, rtol=1e-12, atol=0)
    assert torch.equal(relative.probs(), absolute.probs())
    from tsearch.timesteps.base import StepContext

    ctx = StepContext(step=0, kimg=0.0, progress=0.0)
    assert torch.equal(relative.sample(64, ctx).t, absolute.sample(64, ctx).t)
    w_rel = SpeedWeighting(sch).table()
    w_abs = SpeedWeighting(sch, SpeedWeighting.Params(tau=700)).table()
    assert (w_rel == w_abs).all() and (w_rel[700:] == 1.0).all() and (w_rel[:700] < 1.0).all()


@pytest.mark.parametrize("T", [20, 4000])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_speed_defaults_are_valid_for_other_T(T, schedule):
    cfg = load_config(None, [f"diffusion.num_timesteps={T}", f"diffusion.schedule={schedule}",
                             "eval.steps=10", "timesteps.sampler.name=speed",
                             "timesteps.weighting.name=speed"])
    sch = NoiseSchedule.create(schedule, num_timesteps=T)
    sampler = build_sampler(cfg.timesteps.sampler, sch, seed=0)
    assert sampler.tau == round(0.7 * T) and 0 <= sampler.tau < T
    assert 1 <= sampler.pivot <= T - 1
    if schedule == "linear":  # the pivot sits where it does at T = 1000 (642/1000)
        assert abs(sampler.pivot / T - 0.642) < 0.02
    for p in (sampler.base_probs(), sampler.probs()):
        assert p.shape == (T,) and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
        assert (p > 0).all()
    w = build_weighting(cfg.timesteps.weighting, sch).table()
    assert w.shape == (T,) and (w > 0).all() and (w[sampler.tau:] == 1.0).all()
