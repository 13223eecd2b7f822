"""The user-loop helper, and the README example that documents it (run verbatim)."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import ROOT

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import ConfigError
from tsearch.timesteps import from_config


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example: own-loop -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its own-loop example"
    return match.group(1)


def test_readme_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    assert scope["loss"].isfinite()
    assert scope["plan"].sampler.name == "uniform"


def test_readme_example_with_an_exported_speed_config(tmp_path, monkeypatch):
    cfg = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    cfg["timesteps"] = {"sampler": {"name": "speed", "params": {"k": 5, "tau": 700}},
                        "weighting": {"name": "speed", "params": {"lam": 0.6}}}
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(cfg))
    code = readme_example().replace('"experiments/smoke.yaml"', f'"{tmp_path}/best.yaml"')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    plan = scope["plan"]
    assert plan.sampler.name == "speed" and plan.weighting.name == "speed"
    draw = plan.sample(torch.zeros(4000, 1, 8, 8), step=0)
    assert (draw.t >= 700).float().mean() < 0.1  # the convergence area is suppressed
    factor = plan.loss_factor(draw)
    assert factor.shape == (4000,) and (factor > 0).all()


def test_from_config_schedule_and_seed(tmp_path):
    plan = from_config(ROOT / "experiments" / "smoke.yaml",
                       schedule=NoiseSchedule.create("cosine", 200), seed=3)
    assert plan.sampler.num_timesteps == 200
    other = from_config(ROOT / "experiments" / "smoke.yaml",
                        schedule=NoiseSchedule.create("cosine", 200), seed=3)
    x = torch.zeros(16, 1, 8, 8)
    assert torch.equal(plan.sample(x).t, other.sample(x).t)
    assert not plan.needs_probes
    with pytest.raises(ConfigError, match="does not exist"):
        from_config(tmp_path / "missing.yaml")
