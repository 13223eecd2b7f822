"""`tsearch export best` exports the confirmed winner; overlays carry it onto another config.

The stores are real SQLite MLflow stores written with :class:`tsearch.tracking.MlflowTracker`,
tagged and filled the way a search leaves its parent run (tsearch.names). The raw best trial and
the confirmed winner use different samplers, so which one was exported is visible in the file.
Bad ``--only`` values and bad overlay files are in tests/test_bad_inputs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_harness import run_cli
from conftest import ROOT, SMOKE

from tsearch import names
from tsearch.config import merge_overlay
from tsearch.errors import ConfigError
from tsearch.timesteps import from_config, load_config
from tsearch.tracking import MlflowTracker
from tsearch.tracking.queries import find_search

TRAIN_DIGITS = ROOT / "experiments" / "train-digits.yaml"
SEARCH = "proxy"
RAW_BEST = {"sampler": {"name": "lognormal"}, "weighting": {"name": "min_snr"}, "lr": 2.0e-3}
WINNER = {"sampler": {"name": "speed", "params": {"k": 4.5}}, "weighting": {"name": "p2"},
          "lr": 1.5e-3}


def _config_yaml(root: Path, choice: dict[str, Any], header: str) -> str:
    """A trial's config as an older store's best_config.yaml holds it: every machine field
    resolved for the trial (absolute store, cache and run paths, one thread), no search."""
    cfg = load_config(SMOKE, [
        f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_root={root}/artifacts",
        f"eval.cache_dir={root}/cache", f"train.out_dir={root}/runs", "train.threads=1",
        "train.device=cpu", "tracking.run_name=trial_3", f"optim.lr={choice['lr']}",
    ]).to_dict()
    cfg["timesteps"] = {"sampler": choice["sampler"], "weighting": choice["weighting"]}
    cfg.pop("search")
    return header + yaml.safe_dump(cfg, sort_keys=False)


def _build_store(root: Path, *, confirmed: bool, confirm_enabled: bool | None = None) -> str:
    uri = f"sqlite:///{root}/mlflow.db"
    parent = MlflowTracker(uri, "tsearch", artifact_root=str(root / "artifacts"),
                           run_name=SEARCH, tags={names.TAG_KIND: names.KIND_SEARCH,
                                                  names.TAG_SEARCH: SEARCH})
    enabled = confirmed if confirm_enabled is None else confirm_enabled
    parent.log_params({names.PARAM_SEARCH: {"confirm": {"enabled": enabled,
                                                        "seeds": [101, 102, 103]}}})
    parent.log_text(_config_yaml(root, RAW_BEST, "# Best configuration of search 'proxy'\n"),
                    names.ARTIFACT_BEST_CONFIG)
    metrics = {names.SEARCH_BEST_FID: 31.1}
    if confirmed:
        parent.log_text(_config_yaml(root, WINNER, "# confirmed\n"),
                        names.ARTIFACT_CONFIRMED_CONFIG)
        parent.set_tags({names.TAG_CONFIRMED: "speed k=4.5 + p2"})
        metrics |= {names.CONFIRM_FID_MEAN: 39.12, names.CONFIRM_FID_STD: 2.87}
    parent.log_metrics(metrics, step=0)
    parent.finish()
    return uri


@pytest.fixture(scope="module")
def confirmed_store(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("confirmed")
    return _build_store(root, confirmed=True), root


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "TSEARCH_STORAGE_PATH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _header(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def assert_portable(path: Path, root: Path) -> None:
    """No string value of the exported YAML is an absolute path; the store's paths are gone."""
    text = path.read_text()
    absolute = [s for s in _strings(yaml.safe_load(text)) if s.startswith("/")]
    assert absolute == [], absolute
    assert str(root) not in text


def test_export_picks_the_confirmed_winner(capfd, here, confirmed_store):
    uri, root = confirmed_store
    before = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    result = run_cli(capfd, "export", "best", "-o", "best.yaml", "--tracking-uri", uri)
    assert result.code == 0 and result.err == "", result.err
    after = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    assert after == before  # read only: no lock file, no schema, no artifact touched
    assert result.out.splitlines() == [
        f"confirmed winner of search {SEARCH} (speed k=4.5 + p2, FID 39.12 ± 2.87 over 3 "
        "seeds), config -> best.yaml"]
    text = (here / "best.yaml").read_text()
    header = _header(text)
    assert header.startswith(f"# Confirmed winner of search '{SEARCH}': speed k=4.5 + p2, "
                             "FID 39.12 ± 2.87\n# (mean ± std over 3 fresh seeds")
    assert f"MLflow parent run {find_search(uri, SEARCH).run_id}." in header
    assert "tsearch train THIS_FILE" in header and "overlay" not in header.lower()
    cfg = yaml.safe_load(text)
    assert cfg["timesteps"] == {"sampler": WINNER["sampler"], "weighting": WINNER["weighting"]}
    assert cfg["optim"]["lr"] == WINNER["lr"] and "search" not in cfg
    assert_portable(here / "best.yaml", root)
    # Machine fields are back at their defaults, so `tsearch train best.yaml` runs here.
    assert cfg["train"]["threads"] is None and cfg["train"]["device"] == "auto"
    assert load_config(here / "best.yaml").timesteps.sampler.name == "speed"


def test_unconfirmed_exports_the_raw_best_trial(capfd, here, confirmed_store):
    uri, root = confirmed_store
    result = run_cli(capfd, "export", "best", "-o", "raw.yaml", "--unconfirmed",
                     "--tracking-uri", uri)
    assert result.code == 0 and result.err == "", result.err
    assert result.out.splitlines() == [  # asked for: no note
        f"best config of search {SEARCH} (FID 31.10, unconfirmed) -> raw.yaml"]
    text = (here / "raw.yaml").read_text()
    assert _header(text).startswith(f"# Unconfirmed best trial of search '{SEARCH}': FID 31.10")
    cfg = yaml.safe_load(text)
    assert cfg["timesteps"] == {"sampler": RAW_BEST["sampler"], "weighting": RAW_BEST["weighting"]}
    assert cfg["optim"]["lr"] == RAW_BEST["lr"]
    assert_portable(here / "raw.yaml", root)


@pytest.mark.parametrize("enabled,why", [
    (False, f"note: search {SEARCH} has no confirmation stage, so this is its unconfirmed best "
            "trial"),
    (True, f"note: the confirmation stage of search {SEARCH} has not finished"),
])
def test_without_a_confirmed_winner_the_raw_best_comes_with_a_note(capfd, here, enabled, why):
    """An older store (no confirmation stage) or a search killed before it confirmed."""
    uri = _build_store(here / "store", confirmed=False, confirm_enabled=enabled)
    result = run_cli(capfd, "export", "best", "-o", "best.yaml", "--tracking-uri", uri)
    assert result.code == 0 and result.err == "", result.err
    lines = result.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(why), lines
    assert lines[1] == f"best config of search {SEARCH} (FID 31.10, unconfirmed) -> best.yaml"
    text = (here / "best.yaml").read_text()
    assert _header(text).startswith("# Unconfirmed best trial")
    assert yaml.safe_load(text)["timesteps"]["sampler"] == RAW_BEST["sampler"]
    # The old file had absolute store, cache and run paths and one thread per trial.
    assert_portable(here / "best.yaml", here / "store")


def test_only_writes_an_overlay_of_those_sections(capfd, here, confirmed_store):
    uri, root = confirmed_store
    result = run_cli(capfd, "export", "best", "-o", "over.yaml", "--only", "timesteps, optim",
                     "--tracking-uri", uri)
    assert result.code == 0 and result.err == "", result.err
    assert result.out.endswith("), overlay -> over.yaml\n")
    text = (here / "over.yaml").read_text()
    header = _header(text)
    assert header.startswith("# Confirmed winner")
    assert "# Overlay of section(s) timesteps, optim only" in header
    assert "tsearch train BASE.yaml --overlay THIS_FILE" in header
    assert 'tsearch.timesteps.from_config("BASE.yaml", overlay="THIS_FILE")' in header
    overlay = yaml.safe_load(text)
    assert list(overlay) == ["timesteps", "optim"]
    assert overlay["timesteps"]["sampler"] == WINNER["sampler"]
    assert_portable(here / "over.yaml", root)


def test_overlay_applies_onto_another_base_config(capfd, here, confirmed_store):
    """The winner found on 8x8 digits with a small UNet, trained on train-digits.yaml's 16x16."""
    uri, _ = confirmed_store
    exported = run_cli(capfd, "export", "best", "-o", "over.yaml", "--only", "timesteps,optim",
                       "--tracking-uri", uri)
    assert exported.code == 0, exported.err
    base = load_config(TRAIN_DIGITS)
    result = run_cli(capfd, "train", str(TRAIN_DIGITS), "--overlay", "over.yaml", "--dry-run")
    assert result.code == 0, result.err
    resolved = yaml.safe_load(result.out)
    assert resolved["timesteps"]["sampler"] == {"name": "speed", "params": {"k": 4.5}}
    assert resolved["timesteps"]["weighting"] == {"name": "p2", "params": {}}
    assert resolved["optim"]["lr"] == WINNER["lr"] != base.optim.lr
    base_dict = base.to_dict()
    for section in ("model", "data", "diffusion", "train", "eval", "tracking"):
        assert resolved[section] == base_dict[section], section
    # --set still wins over the overlay.
    result = run_cli(capfd, "train", str(TRAIN_DIGITS), "--overlay", "over.yaml", "--dry-run",
                     "--set", "optim.lr=5e-4")
    assert yaml.safe_load(result.out)["optim"]["lr"] == 5e-4

    plan = from_config(TRAIN_DIGITS, overlay=here / "over.yaml")
    assert plan.sampler.name == "speed" and plan.weighting.name == "p2"
    assert plan.config.data.resolution == 16 and plan.config.model.channels == (32, 64, 64)
    alone = from_config(here / "over.yaml")  # the overlay alone: defaults elsewhere
    assert alone.sampler.name == "speed" and alone.config.model == load_config(None).model
    on_loaded = from_config(base, overlay=here / "over.yaml")
    assert on_loaded.sampler.name == "speed" and on_loaded.config.data.resolution == 16


def test_overlay_sampler_replaces_the_base_sampler_whole(tmp_path):
    """speed's tau would be an unknown field of lognormal: the base's params must not stay."""
    (tmp_path / "base.yaml").write_text(
        "timesteps:\n  sampler: {name: speed, params: {tau: 700}}\n"
        "  weighting: {name: p2, params: {k: 2.0}}\noptim: {lr: 1.0e-3, beta2: 0.99}\n")
    (tmp_path / "over.yaml").write_text(
        "timesteps:\n  sampler: {name: lognormal}\noptim: {lr: 2.0e-3}\n")
    cfg = load_config(tmp_path / "base.yaml", overlays=[tmp_path / "over.yaml"])
    assert cfg.timesteps.sampler.name == "lognormal"
    assert cfg.timesteps.weighting.name == "p2" and cfg.timesteps.weighting.params.k == 2.0
    assert (cfg.optim.lr, cfg.optim.beta2) == (2.0e-3, 0.99)  # other mappings merge
    # Later overlays win; the inputs are not changed.
    base = {"optim": {"lr": 1.0}}
    assert merge_overlay(base, {"optim": {"lr": 2.0}}) == {"optim": {"lr": 2.0}}
    assert base == {"optim": {"lr": 1.0}}
    with pytest.raises(ConfigError, match="'x.yaml' has a search section"):
        merge_overlay({}, {"search": {}}, "x.yaml")
