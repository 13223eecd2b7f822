"""Config loading, overrides and one-line errors (exit code 2, no traceback)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tsearch import config
from tsearch.config import Config, apply_overrides, save_resolved
from tsearch.errors import ConfigError
from tsearch.timesteps import load_config, load_resolved, resolve_params, validate_config
from tsearch.timesteps.speed import SpeedSampler
from tsearch.timesteps.uniform import UniformSampler


def test_defaults_and_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"total_kimg": 3}, "data": {"resolution": 8}}))
    cfg = load_config(path, ["train.batch_size=16", "model.channels=[8, 16]",
                             "model.attention=[false, true]", "timesteps.sampler.name=speed",
                             "timesteps.sampler.params.k=5"])
    assert cfg.train.total_kimg == 3.0 and cfg.train.batch_size == 16
    assert cfg.model.channels == (8, 16) and cfg.model.attention == (False, True)
    assert cfg.timesteps.sampler.params == SpeedSampler.Params(k=5)
    assert cfg.data.name == "digits"


def test_plugin_params_are_typed_once_and_written_back_as_given():
    cfg = load_config(None, ["timesteps.sampler.name=speed", "timesteps.sampler.params.k=5",
                             "timesteps.weighting.name=min_snr"])
    params = cfg.timesteps.sampler.params
    assert isinstance(params, SpeedSampler.Params) and params.k == 5.0
    assert params.tau == SpeedSampler.Params().tau  # defaults filled in, typed
    # Only the given values go back out, so switching the sampler by an override works.
    raw = cfg.to_dict()
    assert raw["timesteps"] == {"sampler": {"name": "speed", "params": {"k": 5.0}},
                                "weighting": {"name": "min_snr", "params": {}}}
    assert validate_config(raw) == cfg
    raw["timesteps"]["sampler"] = {"name": "uniform"}
    assert validate_config(raw).timesteps.sampler.params == UniformSampler.Params()


def test_frozen():
    cfg = load_config(None)
    with pytest.raises(ValidationError):
        cfg.train.batch_size = 3  # type: ignore[misc]


def test_resolved_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=0.01", "diffusion.schedule=cosine"])
    save_resolved(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.01
    assert load_resolved(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.total_kimg=-1", "train.total_kimg = -1"),
        ("train.batch_size=abc", "train.batch_size = 'abc'"),
        ("diffusion.schedule=sigmoid", "'linear', 'quad', 'cosine' or 'flow'"),
        ("train.bogus=1", "unknown key 'train.bogus'"),
        ("bogus.x=1", "unknown key 'bogus'"),
        ("data.resolution=10", "divisible by 4"),
        ("timesteps.sampler.name=nope", "choose one of"),
        ("timesteps.sampler.params.k=3", "timesteps.sampler.params.k"),
        ("data.name=cifar10", "data.root is required"),
        ("train", "KEY=VALUE"),
    ],
)
def test_bad_values_give_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="allowed keys: .*total_kimg"):
        validate_config({"train": {"totl_kimg": 1}})


def test_override_into_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"train": {"batch_size": 4}}, ["train.batch_size.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


_FIELDS = ["train.total_kimg", "train.batch_size", "optim.lr", "optim.beta1", "eval.steps",
           "data.resolution", "model.dropout", "diffusion.num_timesteps", "train.ema_decay",
           "eval.num_images", "optim.grad_clip", "train.seed"]
_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.booleans(), st.lists(st.integers(), max_size=3), st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(_FIELDS), value=_values)
def test_fuzzed_values_either_validate_or_give_one_line(field, value):
    """Whatever a user types, the result is a valid config or exactly one ConfigError line."""
    raw = apply_overrides({}, [])
    section, key = field.split(".")
    raw[section] = {key: value}
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("config error:") and "\n" not in msg
        assert field in msg or "divisible" in msg or "exceeds" in msg
    else:  # accepted: the config holds the value given, and what it writes back validates alike
        held = getattr(getattr(cfg, section), key)
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            assert held == value
        assert validate_config(cfg.to_dict()) == cfg


LEAVES = ("tsearch.errors", "tsearch.labels", "tsearch.names", "tsearch.seeding")


def test_config_imports_no_torch_and_no_plugin():
    """config is a leaf at run time too; the plugin resolver, imported after it, types params."""
    code = textwrap.dedent(f"""
        import sys
        import tsearch.config
        mine = ("tsearch", "tsearch.config", *{LEAVES!r})
        outside = [m for m in sys.modules if m.split(".")[0] == "tsearch"
                   and m not in mine and not m.startswith("tsearch.config.")]
        assert "torch" not in sys.modules and not outside, outside
        from tsearch.timesteps import resolve_params
        from tsearch.timesteps.speed import SpeedSampler
        raw = {{"timesteps": {{"sampler": {{"name": "speed", "params": {{"k": 5}}}}}}}}
        cfg = tsearch.config.validate_config(raw, params=resolve_params)
        assert cfg.timesteps.sampler.params == SpeedSampler.Params(k=5), cfg.timesteps
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_validating_without_a_resolver_is_an_immediate_error():
    """Never silently untyped params: the resolver is required, and pydantic alone refuses."""
    with pytest.raises(TypeError, match="params"):
        config.validate_config({})  # type: ignore[call-arg]
    for build in (Config, lambda: Config.model_validate({"train": {"total_kimg": 1}})):
        with pytest.raises(RuntimeError, match="no resolver for the sampler's params"):
            build()
    given = config.load_config(None, ["timesteps.sampler.name=speed"], params=resolve_params)
    assert given.timesteps.sampler.params == SpeedSampler.Params()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_config_one_line_exit_2(tmp_path):
    proc = _cli("train", str(ROOT / "experiments/smoke.yaml"), "--set", "optim.lr=-3",
                cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "optim.lr = -3" in lines[0] and "Traceback" not in proc.stderr
    missing = _cli("train", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_cli_dry_run_prints_resolved_config(tmp_path):
    proc = _cli("train", str(ROOT / "experiments/smoke.yaml"), "--dry-run", "--set",
                "train.total_kimg=7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.split("# model:")[0]
    printed = yaml.safe_load(text)
    assert printed["train"]["total_kimg"] == 7.0
    assert "M parameters" in proc.stdout
    assert not (tmp_path / "tsearch-runs").exists()  # a dry run writes nothing


def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, int or float) of every plain numeric field, sections recursed into."""
    for name, field in model.model_fields.items():
        args = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            yield from _numeric_fields(args[0], f"{prefix}{name}.")
        elif args in ([int], [float]):
            yield f"{prefix}{name}", args[0]


def _nested(path: str, value) -> dict:
    raw: dict = {}
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return raw


CONFIG_NUMBERS = list(_numeric_fields(Config))


@pytest.mark.parametrize("path,kind", CONFIG_NUMBERS, ids=[p for p, _ in CONFIG_NUMBERS])
def test_every_numeric_field_is_finite_and_bounded(path, kind):
    """inf never passes (it crashes later); an int has an upper bound (10^30 runs forever)."""
    value = math.inf if kind is float else 10**30
    with pytest.raises(ConfigError, match=re.escape(f"{path} = ")):
        validate_config(_nested(path, value))


def _plugin_numbers():
    from tsearch.timesteps import SAMPLERS, WEIGHTINGS

    for kind, registry in (("sampler", SAMPLERS), ("weighting", WEIGHTINGS)):
        for name, cls in sorted(registry.items()):
            for field, typ in _numeric_fields(cls.Params):
                yield kind, name, field, typ


PLUGIN_NUMBERS = list(_plugin_numbers())


@pytest.mark.parametrize("kind,name,field,typ", PLUGIN_NUMBERS,
                         ids=[f"{k}-{n}-{f}" for k, n, f, _ in PLUGIN_NUMBERS])
def test_every_plugin_number_is_finite_and_bounded(kind, name, field, typ):
    value = math.inf if typ is float else 10**30
    raw = {"timesteps": {kind: {"name": name, "params": {field: value}}}}
    with pytest.raises(ConfigError, match=re.escape(f"timesteps.{kind}.params.{field} = ")):
        validate_config(raw)


def test_flow_process_brings_its_schedule_prediction_and_sampler():
    for sets in (["diffusion.process=flow"], ["diffusion.schedule=flow"]):
        cfg = load_config(None, sets)
        d = cfg.diffusion
        assert (d.process, d.schedule, d.prediction, cfg.eval.method) == (
            "flow", "flow", "v", "euler")
        assert validate_config(cfg.to_dict()) == cfg  # the written-back config round-trips
    heun = load_config(None, ["diffusion.process=flow", "eval.method=heun"])
    assert heun.eval.method == "heun"
    assert load_config(None, []).diffusion.process == "vp"


@pytest.mark.parametrize("sets,message", [
    (["diffusion.process=flow", "diffusion.schedule=cosine"], "remove diffusion.schedule"),
    (["diffusion.process=flow", "diffusion.prediction=eps"], "trains the velocity"),
    (["diffusion.process=vp", "diffusion.schedule=flow"], "set diffusion.process: flow"),
    (["diffusion.process=flow", "eval.method=ddim"], "generates with euler or heun"),
    (["eval.method=heun"], "integrates the flow-matching ODE"),
])
def test_contradictory_flow_settings_are_refused_in_one_line(sets, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, sets)
    assert "\n" not in str(info.value)
