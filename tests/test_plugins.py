"""Conformance of the trainer's plug-in points: evaluations (``tsearch.metrics``) and probe kinds
(``tsearch.train.probe``). Every registered entry runs in a real short training run, and a
throwaway entry added in the test shows that one class plus one registry line is all it takes:
the loop does not change."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SMOKE

from tsearch import names
from tsearch.config import ModelConfig
from tsearch.diffusion.model import build_model
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import ConfigError
from tsearch.metrics import EVALUATIONS, EvalSetting, Evaluation, build_evaluations
from tsearch.metrics.evaluation import generate_for_eval
from tsearch.timesteps import (
    Draw,
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
    load_config,
)
from tsearch.tracker import NullTracker
from tsearch.train import train
from tsearch.train.probe import PROBE_KINDS, ProbeKind, ProbeRunner


def smoke(tmp_path: Path, *overrides: str):
    return load_config(SMOKE, [f"train.out_dir={tmp_path}/runs",
                               f"eval.cache_dir={tmp_path}/cache", "train.total_kimg=0.128",
                               "eval.every_kimg=0.064", "eval.num_images=100", *overrides])


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in names.RunDir(run_dir).metrics.read_text().splitlines()]


# --- evaluations --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_every_registered_evaluation_runs_in_training(tmp_path, name):
    cls = EVALUATIONS[name]
    tracker, reports = NullTracker(), []
    result = train(smoke(tmp_path, f"eval.metrics=[{name}]"), tracker=tracker,
                   run_dir=tmp_path / "run", on_report=lambda m, p: reports.append(m))
    assert len(result.evals) == len(reports) == 2  # at 0.064 and 0.128 kimg
    for key in cls.provides:
        values = [v for _, v in tracker.history[key]]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
        assert all(key in r for r in reports)
        assert sum(key in r for r in records(tmp_path / "run")) == 2


@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_every_evaluation_is_deterministic_and_leaves_global_rng_alone(tmp_path, name):
    cfg = smoke(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 8).eval()
    setting = EvalSetting((1, 8, 8), "eps", torch.device("cpu"))
    entry = EVALUATIONS[name](cfg.eval, cfg.data, setting)
    entry.prepare()
    schedule = NoiseSchedule.create("linear")
    rng = torch.random.get_rng_state()
    first, second = entry(model, schedule, 7), entry(model, schedule, 7)
    assert torch.equal(rng, torch.random.get_rng_state())
    timing = {k for k in first if k.endswith("seconds")}
    assert {k: first[k] for k in first if k not in timing} == \
        {k: second[k] for k in second if k not in timing}
    assert set(first) <= set(EVALUATIONS[name].provides)


class MeanPixel(Evaluation):
    """A throwaway evaluation: the mean pixel value of the generated images."""

    name = "mean_pixel"
    provides = ("eval/mean_pixel",)
    headline = "eval/mean_pixel"

    def __call__(self, model, schedule, seed):
        images = generate_for_eval(model, schedule, seed, self.eval_cfg, self.setting)
        return {"eval/mean_pixel": float(images.mean())}


def test_a_new_evaluation_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(EVALUATIONS, MeanPixel.name, MeanPixel)  # the registry line
    tracker, reports = NullTracker(), []
    result = train(smoke(tmp_path, "eval.metrics=[fid, mean_pixel]"), tracker=tracker,
                   run_dir=tmp_path / "run", on_report=lambda m, p: reports.append(m))
    assert [set(m) >= {names.FID, "eval/mean_pixel"} for _, m in result.evals] == [True, True]
    assert all(-1.5 < r["eval/mean_pixel"] < 1.5 for r in reports)
    assert len(tracker.history["eval/mean_pixel"]) == 2
    assert result.final_fid == tracker.history[names.FID][-1][1]


def test_unknown_evaluations_are_config_errors(tmp_path):
    cfg = smoke(tmp_path, "eval.metrics=[fid, nope]")
    with pytest.raises(ConfigError, match="unknown evaluation 'nope'; choose among .*fid"):
        build_evaluations(cfg.eval, cfg.data, EvalSetting((1, 8, 8), "eps",
                                                          torch.device("cpu")))
    with pytest.raises(ConfigError, match="unknown evaluation 'nope'"):
        train(cfg, run_dir=tmp_path / "run")


def test_a_search_needs_an_evaluation_that_computes_its_metric(tmp_path, monkeypatch):
    from tsearch.search.plan import plan

    monkeypatch.setitem(EVALUATIONS, MeanPixel.name, MeanPixel)
    with pytest.raises(ConfigError, match="computes the search metric 'eval/fid'; add fid"):
        plan(smoke(tmp_path, "eval.metrics=[mean_pixel]", "train.total_kimg=0.4"), None)
    checked = plan(smoke(tmp_path, "eval.metrics=[mean_pixel, fid]", "train.total_kimg=0.4"), None)
    assert checked.num_trials == 3


# --- probe kinds --------------------------------------------------------------------------------

class AskingSampler(TimestepSampler):
    """Test-only: uniform draws; asks for a probe of ``kind`` every other step, keeps results."""

    name = "asking"
    unbiased = True

    def __init__(self, schedule, kind: str):
        super().__init__(schedule, None, seed=0)
        self.kind = kind
        self.results: list[ProbeResult] = []

    def sample(self, n: int, ctx: StepContext) -> Draw:
        return self.draw_from(self.probs(), n)

    def probs(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def probe_request(self, ctx: StepContext) -> ProbeSpec | None:
        if ctx.step % 2:
            return None
        return ProbeSpec(t=torch.tensor([10, 500, 990]), image_index=torch.tensor([0, 1, 2]),
                         kind=self.kind, loss="mse")

    def observe_probe(self, result: ProbeResult, ctx: StepContext) -> None:
        self.results.append(result)


@pytest.mark.parametrize("kind", sorted(PROBE_KINDS))
def test_every_probe_kind_runs_in_training(tmp_path, kind):
    schedule = NoiseSchedule.create("linear")
    sampler = AskingSampler(schedule, kind)
    tracker = NullTracker()
    train(smoke(tmp_path), sampler=sampler, tracker=tracker, evaluate=False,
          run_dir=tmp_path / "run")
    assert len(sampler.results) == 2  # steps 0 and 2 of 4
    for r in sampler.results:
        assert r.spec.kind == kind and r.before.shape == (3,) and r.forwards >= 3
        assert torch.isfinite(r.before).all()
    charged = tracker.history[names.PROBE_FORWARDS][-1][1]
    assert charged == sum(r.forwards for r in sampler.results)


class LossTwice(ProbeKind):
    """A throwaway kind: the loss measured twice before the update with different noise."""

    name = "loss_twice"

    @staticmethod
    def before(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        x0, t = state["x0"], state["t"]
        return {"before": runner.losses(spec, x0, t, state["noise"]),
                "second": runner.losses(spec, x0, t, runner.noise(x0)), "forwards": 2 * len(t)}

    @staticmethod
    def after(runner: ProbeRunner, spec: ProbeSpec, state: dict[str, Any]) -> dict[str, Any]:
        return {"after": state["second"]}


def test_a_new_probe_kind_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(PROBE_KINDS, LossTwice.name, LossTwice)  # the registry line
    sampler = AskingSampler(NoiseSchedule.create("linear"), LossTwice.name)
    train(smoke(tmp_path), sampler=sampler, evaluate=False, run_dir=tmp_path / "run")
    assert len(sampler.results) == 2
    for r in sampler.results:
        assert r.forwards == 6 and r.after is not None
        assert not torch.equal(r.before, r.after)  # other noise, same weights


def test_an_unknown_probe_kind_fails_the_run(tmp_path):
    sampler = AskingSampler(NoiseSchedule.create("linear"), "nope")
    with pytest.raises(ValueError, match="probe kind 'nope' is not one of"):
        train(smoke(tmp_path), sampler=sampler, evaluate=False, run_dir=tmp_path / "run")


def test_probe_runner_chunks_match_one_pass():
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=(8, 16), attention=(False, False), norm_groups=4),
                        1, 8)
    spec = ProbeSpec(t=torch.tensor([5, 400, 999, 5, 77]),
                     image_index=torch.tensor([0, 1, 2, 0, 1]), loss="mse")
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = torch.randn(5, 1, 8, 8)
    sched = NoiseSchedule.create("linear")
    out = []
    for chunk in (2, 64):
        runner = ProbeRunner(model, sched, "eps", torch.Generator(), lambda: torch.no_grad(),
                             chunk=chunk)
        out.append(runner.losses(spec, x0[spec.image_index], spec.t, noise))
    assert torch.allclose(out[0], out[1], rtol=1e-5, atol=1e-7)
