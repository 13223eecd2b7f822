"""Bad input of every kind, on every command: one stderr line, a non-zero exit, no traceback.

Part 1, values (issue 12, item 6): each case runs the real CLI in-process on a config written to a
temporary directory, with ``--dry-run`` so that nothing trains and no Ray starts: the checks run
at load and plan time. Fragments name the offending key (or file), so a case fails if the check
goes missing and the value is caught later by something else.

Part 2, commands, paths, stores and names (items 4-6): nothing is written where it should not
be, no store is made by a read-only command, no file is overwritten unasked, no credential is
printed. Commands that read searches run against a real SQLite MLflow store built here with
MLflow's own client, tagged the way a search tags its runs (tsearch.names).

The faults of items 1-3 (disk, kill and resume, a store deleted mid-run) are in test_faults.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from cli_harness import assert_one_line, run_cli
from conftest import ROOT, SMOKE

from tsearch import names
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps import load_config
from tsearch.timesteps.registry import build_sampler, build_weighting
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.weighting import SpeedWeighting

# --- Part 1: values ---------------------------------------------------------------------------

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
def cfg_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(BASE + SPACE + "    optim.lr: {float: [1.0e-4, 1.0e-2]}\n")
    return tmp_path


def test_the_base_config_is_valid(cfg_dir, capfd):
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
def test_bad_value_is_one_line(cfg_dir, capfd, override, key, why):
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
def test_bad_plugin_value_is_one_line(cfg_dir, capfd, overrides, key, why):
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
def test_bad_search_space_is_refused_at_plan_time(cfg_dir, capfd, space, key, why):
    (cfg_dir / "s.yaml").write_text(BASE + SPACE + f"    {space}\n")
    assert_one_line(run_cli(capfd, "search", "s.yaml", "--dry-run"), key, why)


def test_combinations_beyond_the_cap_still_check_every_value(cfg_dir, capfd):
    """100 x 100 x 2 combinations: past the cap each value is still resolved once."""
    seeds = list(range(100))
    space = (f"    train.seed: {{choice: {seeds}}}\n    eval.seed: {{choice: {seeds}}}\n"
             "    diffusion.num_timesteps: {choice: [1000, 5]}\n")
    (cfg_dir / "s.yaml").write_text(BASE + SPACE + space)
    assert_one_line(run_cli(capfd, "search", "s.yaml", "--dry-run"),
                    "search.space combination", "diffusion.num_timesteps=5")


def test_speed_defaults_search_over_T(cfg_dir, capfd):
    """tau as a fraction of T: one SpeeD config is valid for every searched T."""
    space = ("    timesteps.sampler.name: {choice: [uniform, speed]}\n"
             "    diffusion.num_timesteps: {choice: [20, 1000, 4000]}\n")
    (cfg_dir / "s.yaml").write_text(BASE + SPACE + space)
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
    # PyYAML keeps the last of two equal keys: a search space would lose a distribution.
    ("duplicate-key", b"search:\n  space:\n    optim.lr: {float: [1.0e-4, 1.0e-2]}\n"
     b"    optim.lr: {choice: [0.001]}\n", "key 'optim.lr' twice in one mapping (lines 3 and 4)"),
    ("duplicate-key-inline", b"train: {seed: 1, seed: 2}\n", "key 'seed' twice"),
]


@pytest.mark.parametrize("content,why", [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_one_line(cfg_dir, capfd, content, why):
    (cfg_dir / "bad.yaml").write_bytes(content)
    assert_one_line(run_cli(capfd, "train", "bad.yaml", "--dry-run"), "'bad.yaml'", why)


def test_small_aliases_still_work(cfg_dir, capfd):
    (cfg_dir / "a.yaml").write_text(BASE + "tracking: &t {experiment: shared}\n")
    assert run_cli(capfd, "train", "a.yaml", "--dry-run").code == 0
    # A merge key's values may be overridden: that is its purpose, not a duplicate key.
    from tsearch.config.reader import load_yaml

    merged = load_yaml("base: &b {seed: 1, threads: 1}\ntrain: {<<: *b, seed: 2}\n")
    assert merged["train"] == {"seed": 2, "threads": 1}


OVERLAY_CASES = [  # (overlay file content or None for a missing file, extra args, fragments)
    ("bogus: {x: 1}\n", [], ["overlay 'o.yaml'", "top-level key 'bogus' is not a config section",
                            "overlay sections: data, model"]),
    ("search: {num_samples: 3}\n", [], ["overlay 'o.yaml' has a search section"]),
    (None, [], ["config file 'o.yaml' does not exist"]),
    ("- timesteps\n", [], ["'o.yaml' must hold a mapping"]),
    ("", [], ["'o.yaml' is empty"]),
    ("optim: {lr: 5}\n", [], ["optim.lr = 5", "less than or equal to 1"]),
    ("timesteps: {sampler: {name: lognormal, params: {k: 2}}}\n", [],
     ["unknown key 'timesteps.sampler.params.k'"]),
    ("optim: {lr: 1.0e-3}\n", ["--resume", "somewhere"],
     ["--overlay cannot be combined with --resume"]),
]


@pytest.mark.parametrize("content,args,fragments", OVERLAY_CASES,
                         ids=[f[0][:40] for _, _, f in OVERLAY_CASES])
def test_bad_overlay_is_one_line(cfg_dir, capfd, content, args, fragments):
    if content is not None:
        (cfg_dir / "o.yaml").write_text(content)
    config = [] if args else ["c.yaml"]
    result = run_cli(capfd, "train", *config, "--overlay", "o.yaml", "--dry-run", *args)
    assert_one_line(result, *fragments)


OVERRIDE_CASES = [
    ("train.seed=&a [*a]", "recursive alias"),
    ("train.seed=[1, 2", "not valid YAML"),
    ("train.seed=*nope", "undefined alias"),
    ("train.seed=" + "9" * 5000, "cannot be read"),
    ("train.seed=!!python/object:os.system {}", "not valid YAML"),
]


@pytest.mark.parametrize("override,why", OVERRIDE_CASES, ids=[c[0][:24] for c in OVERRIDE_CASES])
def test_bad_override_value_is_one_line(cfg_dir, capfd, override, why):
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


# --- Part 2: commands, paths, stores and names ------------------------------------------------


SEARCH = "grid1"
BEST_YAML = "timesteps:\n  sampler:\n    name: speed\n"


def _build_store(root: Path) -> str:
    """A finished two-method, two-seed search as tsearch leaves it in MLflow."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tsearch", (root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=SEARCH, tags={
        names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: SEARCH}).info.run_id
    best = root / names.ARTIFACT_BEST_CONFIG
    best.write_text(BEST_YAML)
    client.log_artifact(parent, str(best))
    client.log_metric(parent, names.SEARCH_BEST_FID, 40.0)
    for i, (method, seed) in enumerate([("uniform", 1), ("uniform", 2), ("speed", 1),
                                        ("speed", 2)]):
        run = client.create_run(exp, run_name=f"trial_{i}", tags={
            names.TAG_PARENT_RUN: parent, names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_TRIAL_ID: f"trial_{i}", names.TAG_SEARCH: SEARCH}).info.run_id
        for key, value in {f"{names.PARAM_TRIAL}.method": method,
                           f"{names.PARAM_TRIAL}.train.seed": seed,
                           f"{names.PARAM_CONFIG}.timesteps.sampler.name": method,
                           f"{names.PARAM_CONFIG}.timesteps.weighting.name": "none",
                           f"{names.PARAM_CONFIG}.diffusion.schedule": "linear"}.items():
            client.log_param(run, key, value)
        for step, fid in ((200, 90.0 - 5 * i), (400, 60.0 - 5 * i)):
            client.log_metric(run, names.FID, fid, step=step)
            client.log_metric(run, names.TRAIN_FORWARDS, 3.0 * step, step=step)
        client.set_terminated(run)
    client.set_terminated(parent)
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return _build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """An empty working directory, with no MLflow or Ray settings from the caller's shell."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                "TSEARCH_STORAGE_PATH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _unwritable() -> Path:
    """A directory nobody (root included) can create files in."""
    if os.geteuid() != 0:
        locked = Path(tempfile.mkdtemp(prefix="tsearch-locked-"))
        locked.chmod(0o500)
        return locked
    try:  # sysfs refuses new files even to root
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable directory on this machine")


def _exported(path: Path) -> str:
    """An exported file's YAML body: its comment header (what it is) dropped."""
    text = path.read_text()
    assert text.startswith("# Unconfirmed best trial of search"), text
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- 1. usage errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragments", [
    (["train", "--bogus"], ["error: No such option: --bogus", "(see tsearch train --help)"]),
    (["train", "--dryrun"], ["No such option: --dryrun", "did you mean --dry-run?"]),
    (["nosuchcmd"], ["No such command 'nosuchcmd'", "train, fid-ref, search", "tsearch --help"]),
    (["runs", "show"], ["Missing argument", "tsearch runs show --help"]),
    (["export", "best"], ["Missing option '--output'", "tsearch export best --help"]),
    (["timesteps", "show", "speed", "-T", "abc"], ["'--num-timesteps'", "valid integer"]),
    (["report", "x", "-o", "out", "--nope"], ["No such option: --nope"]),
])
def test_usage_error_is_one_line(capfd, here, args, fragments):
    result = run_cli(capfd, *args)
    assert_one_line(result, *fragments)
    assert result.out == "" and _listing(here) == []


@pytest.mark.parametrize("args,commands", [
    ([], "train, fid-ref, search, submit, report, runs, export, timesteps"),
    (["runs"], "list, show"),
    (["export"], "best"),
    (["timesteps"], "list, show"),
])
def test_missing_command_is_a_usage_error_not_help(capfd, here, args, commands):
    result = run_cli(capfd, *args)
    path = " ".join(["tsearch", *args])
    assert_one_line(result, f"{path} needs a command: {commands}", f"(see {path} --help)")
    assert result.out == ""  # the help is --help's job
    helped = run_cli(capfd, *args, "--help")
    assert helped.code == 0 and "Usage:" in helped.out and helped.err == ""


# --- 2. outputs: checked first, never overwritten unasked ---------------------------------------

def test_export_refuses_to_overwrite_without_force(capfd, here, store):
    target = here / "existing.yaml"
    target.write_bytes(b"mine: 1\n")
    result = run_cli(capfd, "export", "best", "-o", "existing.yaml", "--tracking-uri", store)
    assert_one_line(result, "existing.yaml exists", "--force")
    assert target.read_bytes() == b"mine: 1\n"
    forced = run_cli(capfd, "export", "best", "-o", "existing.yaml", "--force",
                     "--tracking-uri", store)
    assert forced.code == 0, forced.err
    assert _exported(target) == BEST_YAML


def test_export_writes_a_new_file_in_new_directories(capfd, here, store):
    result = run_cli(capfd, "export", "best", "-o", "new/dir/best.yml", "--tracking-uri", store)
    assert result.code == 0 and result.err == "", result.err
    assert _exported(here / "new/dir/best.yml") == BEST_YAML
    assert f"best config of search {SEARCH}" in result.out
    # Still refused the second time: the file now exists.
    again = run_cli(capfd, "export", "best", "-o", "new/dir/best.yml", "--tracking-uri", store)
    assert_one_line(again, "exists", "--force")


@pytest.mark.parametrize("output,fragments", [
    ("best.txt", ["-o best.txt", "export writes YAML", ".yaml or .yml"]),
    ("best", ["-o best", ".yaml or .yml"]),
    ("some_file.txt/x.yaml", ["some_file.txt is a file, not a directory"]),
    ("adir", ["-o adir is a directory"]),
])
def test_export_refuses_a_bad_output_before_reading_the_store(capfd, here, store, output,
                                                              fragments):
    (here / "some_file.txt").write_bytes(b"keep")
    (here / "adir").mkdir()
    result = run_cli(capfd, "export", "best", "-o", output, "--tracking-uri", store)
    assert_one_line(result, *fragments)
    assert (here / "some_file.txt").read_bytes() == b"keep"
    assert _listing(here) == ["adir", "some_file.txt"]


@pytest.mark.parametrize("only,fragments", [
    ("timesteps,bogus", ["--only 'timesteps,bogus'", "'bogus' is not a config section",
                         "sections: data, model, diffusion, timesteps, optim"]),
    ("search", ["'search' is not a config section"]),
    (" , ", ["names no section", "e.g. --only timesteps,optim"]),
])
def test_export_only_unknown_section_is_refused_before_reading_the_store(capfd, here, only,
                                                                          fragments):
    result = run_cli(capfd, "export", "best", "-o", "b.yaml", "--only", only)
    assert_one_line(result, *fragments)  # not "no MLflow store": the store was not read
    assert _listing(here) == []


def test_export_to_an_unwritable_place(capfd, here, store):
    target = _unwritable() / "best.yaml"
    result = run_cli(capfd, "export", "best", "-o", str(target), "--tracking-uri", store)
    assert_one_line(result, f"cannot write -o {target}", "not writable")
    assert not target.exists()


def test_report_output_that_is_a_file_is_refused(capfd, here, store):
    (here / "out").write_bytes(b"not a directory")
    result = run_cli(capfd, "report", SEARCH, "-o", "out", "--tracking-uri", store)
    assert_one_line(result, "-o out is a file")
    assert (here / "out").read_bytes() == b"not a directory"


def test_report_output_in_an_unwritable_place(capfd, here, store):
    target = _unwritable() / "report"
    result = run_cli(capfd, "report", SEARCH, "-o", str(target), "--tracking-uri", store)
    assert_one_line(result, "cannot write the report", "not writable")
    assert not target.exists()


@pytest.mark.parametrize("output,fragments", [
    ("plot.jpg", ["-o plot.jpg", "PNG", ".png"]),
    ("file.txt/x.png", ["file.txt is a file, not a directory"]),
])
def test_timesteps_show_refuses_a_bad_plot_path(capfd, here, output, fragments):
    (here / "file.txt").write_bytes(b"keep")
    result = run_cli(capfd, "timesteps", "show", "uniform", "-o", output)
    assert_one_line(result, *fragments)
    assert result.out == "" and _listing(here) == ["file.txt"]


def test_timesteps_show_to_an_unwritable_place(capfd, here):
    target = _unwritable() / "x.png"
    result = run_cli(capfd, "timesteps", "show", "uniform", "-o", str(target))
    assert_one_line(result, "cannot write -o", "not writable")
    assert result.out == ""


# --- 3. read-only commands never create a store -------------------------------------------------

@pytest.mark.parametrize("args", [
    ["runs", "list"],
    ["runs", "show", SEARCH],
    ["export", "best", "-o", "best.yaml"],
    ["report", SEARCH, "-o", "rep"],
])
def test_read_only_commands_create_no_store(capfd, here, args):
    result = run_cli(capfd, *args)
    assert_one_line(result, "no MLflow store at tsearch-runs/mlflow.db", "run a search first",
                    "--tracking-uri")
    assert _listing(here) == []


def test_missing_store_from_the_environment(capfd, here, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{here}/elsewhere/m.db")
    result = run_cli(capfd, "runs", "list")
    assert_one_line(result, f"no MLflow store at {here}/elsewhere/m.db")
    assert _listing(here) == []


def test_empty_and_foreign_sqlite_files_are_not_stores(capfd, here):
    import sqlite3

    (here / "empty.db").write_bytes(b"")
    conn = sqlite3.connect(here / "other.db")
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    before = (here / "other.db").read_bytes()
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///empty.db")
    assert_one_line(result, "empty.db is an empty file")
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///other.db")
    assert_one_line(result, "other.db is an SQLite database but not an MLflow store")
    assert (here / "empty.db").read_bytes() == b""
    assert (here / "other.db").read_bytes() == before
    assert _listing(here) == ["empty.db", "other.db"]


def test_reading_a_store_changes_nothing_in_it(capfd, here, store):
    db = here / "copy" / "mlflow.db"  # a copy no earlier test has read
    db.parent.mkdir()
    shutil.copyfile(store[len("sqlite:///"):], db)
    uri = f"sqlite:///{db}"
    before = (db.read_bytes(), _listing(db.parent))
    result = run_cli(capfd, "runs", "list", "--tracking-uri", uri)
    assert result.code == 0 and SEARCH in result.out, result.err
    result = run_cli(capfd, "runs", "show", SEARCH, "--tracking-uri", uri)
    assert result.code == 0 and "trial_3" in result.out, result.err
    assert (db.read_bytes(), _listing(db.parent)) == before  # no lock file, no new schema


# --- 4. a store URI that is not a store: one line, fast -----------------------------------------

@pytest.mark.parametrize("args", [["runs", "list"], ["report", "s", "-o", "rep"],
                                  ["export", "best", "-o", "b.yaml"]])
def test_garbage_sqlite_file_is_one_line_fast(capfd, here, args):
    junk = os.urandom(4096)
    (here / "garbage.db").write_bytes(junk)
    t0 = time.monotonic()
    result = run_cli(capfd, *args, "--tracking-uri", "sqlite:///garbage.db")
    assert_one_line(result, "garbage.db is not an SQLite database")
    assert time.monotonic() - t0 < 10
    assert (here / "garbage.db").read_bytes() == junk and _listing(here) == ["garbage.db"]


def test_directory_as_sqlite_store_is_one_line(capfd, here):
    (here / "somedir").mkdir()
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///somedir")
    assert_one_line(result, "somedir is a directory", "sqlite:///somedir/mlflow.db")
    assert _listing(here) == ["somedir"]


@pytest.mark.parametrize("command", ["train", "search"])
def test_train_and_search_refuse_a_garbage_store_before_starting(capfd, here, command):
    (here / "garbage.db").write_bytes(b"\x00garbage" * 50)
    result = run_cli(capfd, command, str(ROOT / "experiments" / "smoke.yaml"), "--set",
                     "tracking.uri=sqlite:///garbage.db", "--set", "search.storage_path=ray")
    assert_one_line(result, "garbage.db is not an SQLite database", "--set tracking.uri=")
    assert _listing(here) == ["garbage.db"]


def test_check_sqlite_store_for_writers_and_readers(here):
    from tsearch.errors import ConfigError
    from tsearch.tracking.store import check_sqlite_store

    (here / "d").mkdir()
    (here / "g.db").write_bytes(b"x" * 100)
    (here / "e.db").write_bytes(b"")
    for uri in ("sqlite:///new.db", "sqlite:///e.db", "http://h:5000", "sqlite:///:memory:"):
        check_sqlite_store(uri)  # a writer may create these
    with pytest.raises(ConfigError, match="is a directory.*--set tracking.uri=sqlite:///d/"):
        check_sqlite_store("sqlite:///d", option="--set tracking.uri=")
    with pytest.raises(ConfigError, match="not an SQLite database"):
        check_sqlite_store("sqlite:///g.db")
    with pytest.raises(ConfigError, match="no MLflow store at new.db"):
        check_sqlite_store("sqlite:///new.db", must_exist=True)
    assert _listing(here) == ["d", "e.db", "g.db"]


# --- 5 and 9. report options are checked before fetching; the error is the only line ----------

def test_report_unknown_seed_key_lists_the_searched_keys(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--seed-key", "no.such.key",
                     "--tracking-uri", store)
    assert_one_line(result, "--seed-key 'no.such.key'", "searched keys: method, train.seed")
    assert _listing(here) == []


def test_report_unknown_baseline_is_the_only_line(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--baseline", "nosuchrow",
                     "--tracking-uri", store)
    assert_one_line(result, "--baseline 'nosuchrow'", "rows: speed, uniform")
    assert "fetching" not in result.err and _listing(here) == []


def test_report_logs_one_progress_line_once_fetching_works(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--seed-key", "train.seed",
                     "--baseline", "uniform", "--tracking-uri", store)
    assert result.code == 0, result.err
    assert result.err_lines == [f"fetching trial runs of search '{SEARCH}' from {store}: 4/4"]
    assert "(4 trials, 2 cells in 1 block(s))" in result.out
    assert (here / "rep" / "report.md").is_file()


# --- 6. timesteps show at a small T -------------------------------------------------------------

def test_timesteps_show_speed_at_small_T(capfd, here):
    result = run_cli(capfd, "timesteps", "show", "speed", "-T", "20", "-o", "s.png")
    if result.code != 0:  # SpeeD's tau as an absolute index is another change's business
        assert_one_line(result, "tau")
        assert "eval.steps" not in result.err
        return
    assert "(T=20)" in result.out and (here / "s.png").is_file()


# --- 7. credentials in URIs are never printed ---------------------------------------------------

@pytest.mark.parametrize("args", [["runs", "list"], ["runs", "show", "x"],
                                  ["export", "best", "-o", "b.yaml"],
                                  ["report", "x", "-o", "rep"]])
def test_tracking_uri_password_is_masked(capfd, here, args):
    port = _free_port()
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    result = run_cli(capfd, *args, "--tracking-uri", uri)
    assert_one_line(result, f"http://127.0.0.1:{port} is unreachable", code=1)
    assert "s3cret" not in result.err + result.out and _listing(here) == []


def test_search_result_lines_mask_the_tracking_uri(capfd):
    from types import SimpleNamespace

    from tsearch.cli.search import _print_search_result

    capfd.readouterr()
    _print_search_result(SimpleNamespace(name="s", trials=[], seconds=1.0, parent_run_id="p",
                                         tracking_uri="http://alice:s3cret@10.9.8.7:5000",
                                         labels=[], confirmation=None))
    out = capfd.readouterr().out
    assert "open http://alice:***@10.9.8.7:5000" in out and "s3cret" not in out


def test_submit_masks_the_job_server_password(capfd, here, monkeypatch):
    port = _free_port()
    monkeypatch.chdir(ROOT)
    result = run_cli(capfd, "submit", "experiments/smoke.yaml", "--address",
                     f"http://bob:hunter2@127.0.0.1:{port}", "--set",
                     "tracking.uri=http://alice:s3cret@10.9.8.7:5000", "--set",
                     "search.storage_path=/shared/ray")
    assert_one_line(result, f"bob:***@127.0.0.1:{port}", code=1)
    assert "hunter2" not in result.err and "s3cret" not in result.err


# --- 8. the local cluster script keeps the Ray token off command lines --------------------------

def test_cluster_script_passes_no_token_on_a_command_line():
    script = ROOT / "infra" / "local" / "cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    start = text.index('cat > "$DIR/env" <<EOF')  # the env file (mode 600) may hold it
    body = text[:start] + text[text.index("\nEOF\n", start):]
    assert 'RAY_AUTH_TOKEN="$(' not in body and "RAY_AUTH_TOKEN=$(" not in body
    assert 'RAY_AUTH_TOKEN_PATH="$DIR/token"' in text and "env -u RAY_AUTH_TOKEN" in text


# --- Part 3: runs that cannot start -------------------------------------------------------------



def _run_statuses(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("select status from runs")]


@pytest.mark.parametrize("case", ["missing data root", "out_dir under a file"])
def test_train_that_cannot_start_is_one_line_and_closes_its_mlflow_run(capfd, here, case):
    (here / "f").write_text("x")
    extra = (["--set", "data.name=mnist", "--set", f"data.root={here}/nowhere"]
             if case == "missing data root" else ["--set", f"train.out_dir={here}/f/runs"])
    db = here / "store" / "mlflow.db"
    result = run_cli(capfd, "train", str(SMOKE), "--set", f"tracking.uri=sqlite:///{db}",
                     "--set", f"eval.cache_dir={here}/cache", *extra)
    assert_one_line(result, "nowhere" if case == "missing data root" else "f/runs")
    assert _run_statuses(db) == ["FAILED"]  # not left RUNNING


def test_resume_without_a_checkpoint_is_one_line_and_closes_its_mlflow_run(capfd, here):
    db = here / "store" / "mlflow.db"
    sets = ["--set", f"tracking.uri=sqlite:///{db}", "--set", f"train.out_dir={here}/runs",
            "--set", f"eval.cache_dir={here}/cache", "--set", "train.total_kimg=0.032",
            "--set", "eval.every_kimg=0.032"]
    assert run_cli(capfd, "train", str(SMOKE), *sets).code == 0
    run_dir = next((here / "runs").iterdir())
    for ckpt in (run_dir / "checkpoints").iterdir():
        ckpt.unlink()
    result = run_cli(capfd, "train", "--resume", str(run_dir))
    assert_one_line(result, "no checkpoint", str(run_dir))
    assert _run_statuses(db) == ["FAILED"]  # the re-opened run is closed again


def test_resume_of_a_directory_that_is_no_run_is_one_line(capfd, here):
    (here / "empty").mkdir()
    assert_one_line(run_cli(capfd, "train", "--resume", str(here / "empty")),
                    "is not a run directory")


@pytest.mark.slow
def test_search_error_after_ray_started_is_the_only_line(here):
    """Ray prints nothing of its own before the error (no token-auth warning line)."""
    from cli_harness import run_cli_subprocess

    tmp = tempfile.mkdtemp(prefix="tsb", dir="/tmp")  # short: Ray's socket paths
    try:
        result = run_cli_subprocess("search", str(SMOKE), "--resume", "--set",
                                    f"search.storage_path={here}/ray", "--set",
                                    f"tracking.uri=sqlite:///{here}/mlflow.db", cwd=here,
                                    env={"TMPDIR": tmp})
        assert_one_line(result, "nothing to resume", code=1)
        assert not list(Path(tmp, "ray").glob("session_2*"))  # its Ray session is gone
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_credentials_are_neither_logged_nor_exported(tmp_path):
    """A trial logs its whole config as params, and a search exports its best config."""
    import json

    from tsearch.search.parent_run import _masked
    from tsearch.tracker import NullTracker
    from tsearch.train import train

    uri = "http://alice:s3cret@10.9.8.7:5000"
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"tracking.uri={uri}",
                              "train.total_kimg=0.032", "eval.every_kimg=0.032"])
    tracker = NullTracker()
    train(cfg, tracker=tracker, evaluate=False)
    assert tracker.params["config.tracking.uri"] == "http://alice:***@10.9.8.7:5000"
    assert "s3cret" not in json.dumps(tracker.artifacts["config.json"] | tracker.params)
    exported = _masked(cfg.to_dict())
    assert exported["tracking"]["uri"] == "http://alice:***@10.9.8.7:5000"
    assert cfg.tracking.uri == uri  # the run itself still connects with them
