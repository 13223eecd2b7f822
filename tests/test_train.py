"""The real trainer on a tiny UNet: step order, probes, exact resume, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE

from tsearch.errors import CheckpointError, DivergenceError, TsearchError
from tsearch.timesteps import Draw, ProbeSpec, StepContext, TimestepSampler, load_config
from tsearch.tracker import NullTracker
from tsearch.train import train
from tsearch.train.checkpoint import list_checkpoints


def smoke(tmp_path: Path, *overrides: str):
    return load_config(SMOKE, [f"train.out_dir={tmp_path}/runs",
                               f"eval.cache_dir={tmp_path}/cache", *overrides])


class ProbingSampler(TimestepSampler):
    """Test-only: uniform draws, a probe every 3rd step, records everything it is told."""

    name = "probing"
    unbiased = True

    def __init__(self, schedule, params=None, seed=0, kind="delta"):
        super().__init__(schedule, params, seed)
        self.kind = kind
        self.calls: list[tuple[str, int]] = []
        self.results = []
        self.observed = []

    def sample(self, n, ctx: StepContext) -> Draw:
        self.calls.append(("sample", ctx.step))
        assert ctx.x0 is not None and ctx.x0.shape[0] == n
        t = torch.randint(0, self.num_timesteps, (n,), generator=self.generator)
        return Draw(t=t, importance_weight=torch.ones(n))

    def probe_request(self, ctx):
        self.calls.append(("probe_request", ctx.step))
        if ctx.step % 3:
            return None
        return ProbeSpec(t=torch.tensor([10, 500, 990, 10]), image_index=torch.tensor([0, 0, 1, 2]),
                         kind=self.kind, loss="vlb")

    def observe(self, draw, losses, ctx):
        self.calls.append(("observe", ctx.step))
        self.observed.append((draw.t.clone(), losses.clone()))

    def observe_probe(self, result, ctx):
        self.calls.append(("observe_probe", ctx.step))
        self.results.append(result)

    def probs(self):
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)


def test_step_order_and_delta_probe(tmp_path):
    cfg = smoke(tmp_path, "train.total_kimg=0.192")  # 6 steps of 32
    sampler = ProbingSampler.__new__(ProbingSampler)
    from tsearch.diffusion.schedule import NoiseSchedule

    sampler.__init__(NoiseSchedule.create("linear"), seed=1)
    tracker = NullTracker()
    result = train(cfg, tracker=tracker, sampler=sampler, evaluate=False)
    assert result.steps == 6
    # The order docs/design.md 3 fixes, per step.
    first = [c for c, s in sampler.calls if s == 0]
    assert first == ["sample", "probe_request", "observe", "observe_probe"]
    assert [c for c, s in sampler.calls if s == 1] == ["sample", "probe_request", "observe"]
    assert len(sampler.results) == 2  # steps 0 and 3
    r = sampler.results[0]
    assert r.before.shape == (4,) and r.after.shape == (4,)
    assert torch.isfinite(r.before).all() and torch.isfinite(r.after).all()
    assert not torch.equal(r.before, r.after)  # the update changed the model
    assert r.forwards == 8
    # Unweighted per-sample losses of the drawn batch.
    t, losses = sampler.observed[0]
    assert t.shape == (32,) and losses.shape == (32,) and (losses > 0).all()
    hist = tracker.history
    assert hist["compute/probe_forwards"][-1][1] == 16
    assert {"train/loss", "train/loss_q1", "train/loss_q4", "sampler/entropy"} <= set(hist)
    assert (result.run_dir / "config.json").is_file()
    assert list_checkpoints(result.run_dir / "checkpoints")


@pytest.mark.parametrize("common", [True, False])
def test_probe_common_random_numbers(tmp_path, common):
    """With a negligible update, CRN gives after == before; fresh noise does not."""
    from tsearch.diffusion.schedule import NoiseSchedule

    class Sampler(ProbingSampler):
        def probe_request(self, ctx):
            spec = super().probe_request(ctx)
            return spec and ProbeSpec(t=spec.t, image_index=spec.image_index, common_noise=common)

    sampler = Sampler(NoiseSchedule.create("linear"), seed=1)
    train(smoke(tmp_path, "train.total_kimg=0.032", "optim.lr=1e-12"), sampler=sampler,
          evaluate=False)
    r = sampler.results[0]
    assert torch.allclose(r.before, r.after, rtol=1e-4) is common


def test_grad_norm_probe_matches_autograd():
    from tsearch.config import ModelConfig
    from tsearch.diffusion.loss import per_sample_vlb_bpd
    from tsearch.diffusion.model import build_model
    from tsearch.diffusion.schedule import NoiseSchedule
    from tsearch.train.probe import ProbeRunner

    sched = NoiseSchedule.create("linear")
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=(8, 16), attention=(False, True), norm_groups=4),
                        1, 8)
    probe = ProbeRunner(model, sched, "eps", torch.Generator().manual_seed(0),
                        autocast=lambda: torch.autocast("cpu", enabled=False), chunk=3)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    spec = ProbeSpec(t=torch.tensor([5, 400, 999, 5]), image_index=torch.tensor([0, 1, 2, 0]),
                     kind="grad_norm", loss="vlb")
    state = probe.before(spec, x0)
    result = probe.after(spec, state)
    assert result.after is None and result.grad_sq_norm.shape == (4,)
    for i in range(4):
        model.zero_grad()
        loss = per_sample_vlb_bpd(model, sched, state["x0"][i:i + 1], state["t"][i:i + 1],
                                  state["noise"][i:i + 1])[0]
        loss.backward()
        expected = sum(float(p.grad.pow(2).sum()) for p in model.parameters())
        assert float(result.grad_sq_norm[i]) == pytest.approx(expected, rel=1e-3)


def _losses(tmp_path: Path) -> list[float]:
    rows = [json.loads(x) for x in (tmp_path).read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.parametrize("process", ["vp", "flow"])
def test_resume_reproduces_next_losses_exactly(tmp_path, process):
    # Flow matching also draws each sample's time within its cell: from the checkpointed stream.
    overrides = ("train.total_kimg=0.384", "eval.every_kimg=0.192", "train.log_every_kimg=0.032",
                 *(["diffusion.schedule=flow"] if process == "flow" else []))
    full = train(smoke(tmp_path / "a", *overrides), evaluate=False)
    full_losses = _losses(full.run_dir / "metrics.jsonl")

    cfg = smoke(tmp_path / "b", *overrides)
    part = train(cfg, evaluate=False, max_steps=6)  # stops at the first checkpoint
    assert part.steps == 6
    resumed = train(cfg, run_dir=part.run_dir, resume=True, evaluate=False)
    assert resumed.steps == 12
    assert _losses(part.run_dir / "metrics.jsonl") == full_losses


def test_learned_uncertainty_weighting_trains_logs_and_resumes_exactly(tmp_path):
    # EDM2's u(t) is trained by the model's optimizer and restored exactly from a checkpoint:
    # the resumed run's next losses, and its learned w(t), equal an uninterrupted run's.
    overrides = ("train.total_kimg=0.384", "eval.every_kimg=0.192", "train.log_every_kimg=0.032",
                 "timesteps.weighting.name=uncertainty")
    full = train(smoke(tmp_path / "a", *overrides), evaluate=False)
    full_losses = _losses(full.run_dir / "metrics.jsonl")
    cfg = smoke(tmp_path / "b", *overrides)
    part = train(cfg, evaluate=False, max_steps=6)
    resumed = train(cfg, run_dir=part.run_dir, resume=True, evaluate=False)
    assert resumed.steps == 12
    assert _losses(part.run_dir / "metrics.jsonl") == full_losses
    a, b = np.load(full.run_dir / "timesteps.npz"), np.load(part.run_dir / "timesteps.npz")
    assert a["weights"].shape == (2, 1000) and np.array_equal(a["weights"], b["weights"])
    assert np.array_equal(a["weight_kimg"], b["weight_kimg"])
    assert not np.allclose(a["weights"][-1], 1.0)  # u(t) moved from its zero start
    assert (full.run_dir / "w_t_heatmap.png").stat().st_size > 0


def test_checkpoint_of_the_fid_only_layout_still_resumes(tmp_path):
    """Checkpoints written before evaluations were plug-ins keep (kimg, FID) pairs only."""
    cfg = smoke(tmp_path, "train.total_kimg=0.128", "eval.every_kimg=0.064",
                "eval.num_images=100")
    part = train(cfg, max_steps=2)
    ckpt = list_checkpoints(part.run_dir / "checkpoints")[-1]
    state = torch.load(ckpt, weights_only=True)
    evals = state.pop("evals")
    state["fid_history"] = [[k, m["eval/fid"]] for k, m in evals]
    torch.save(state, ckpt)
    resumed = train(cfg, run_dir=part.run_dir, resume=True)
    assert resumed.fid_history[0] == (evals[0][0], evals[0][1]["eval/fid"])
    assert len(resumed.fid_history) == 2


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    cfg = smoke(tmp_path, "train.total_kimg=0.064", "eval.every_kimg=0.064")
    run = train(cfg, evaluate=False)
    ckpt = list_checkpoints(run.run_dir / "checkpoints")[-1]
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        train(cfg, run_dir=run.run_dir, resume=True, evaluate=False)
    assert "\n" not in str(info.value)


def test_divergence_fails_the_run_with_reason(tmp_path):
    cfg = smoke(tmp_path, "optim.lr=1.0", "optim.grad_clip=null", "train.total_kimg=0.32",
                "train.log_every_kimg=0.032")
    tracker = NullTracker()

    class Exploding(ProbingSampler):
        def probe_request(self, ctx):
            return None

        def sample(self, n, ctx):
            draw = super().sample(n, ctx)
            w = torch.full((n,), float("inf") if ctx.step == 2 else 1.0)
            return Draw(t=draw.t, importance_weight=w)

    from tsearch.diffusion.schedule import NoiseSchedule

    with pytest.raises(DivergenceError, match="diverged"):
        train(cfg, tracker=tracker, sampler=Exploding(NoiseSchedule.create("linear")),
              evaluate=False)
    assert tracker.status == "FAILED" and "diverged" in tracker.reason


def _records(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["images_seen"], tuple(sorted(k for k in r if k not in ("images_seen", "step"))))
            for r in rows]


def test_corrupt_newest_checkpoint_is_skipped_and_records_are_not_repeated(tmp_path,
                                                                           tsearch_lines):
    """Resume from the previous checkpoint with one warning; replayed records are not rewritten."""
    overrides = ("train.total_kimg=0.256", "eval.every_kimg=0.064", "train.log_every_kimg=0.032")
    full = train(smoke(tmp_path / "a", *overrides), evaluate=False)
    cfg = smoke(tmp_path / "b", *overrides)
    part = train(cfg, evaluate=False, max_steps=5)  # checkpoints at 2 and 4 steps, records to 5
    ckpts = list_checkpoints(part.run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt-000000064.pt", "ckpt-000000128.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:100])
    lines_before = (part.run_dir / "metrics.jsonl").read_text().splitlines()
    said = tsearch_lines
    said.clear()
    resumed = train(cfg, run_dir=part.run_dir, resume=True, evaluate=False)
    assert resumed.steps == 8
    warnings = [m for m in said if m.startswith("warning:")]
    assert len(warnings) == 1 and "ckpt-000000128.pt" in warnings[0], said
    assert (part.run_dir / "checkpoints" / "ckpt-000000128.pt.corrupt").is_file()
    assert any("resumed from" in m and "ckpt-000000064.pt" in m for m in said), said
    records = _records(part.run_dir / "metrics.jsonl")
    assert len(records) == len(set(records))  # the replay from 64 to 160 images wrote nothing
    assert (part.run_dir / "metrics.jsonl").read_text().splitlines()[:len(lines_before)] \
        == lines_before  # never shrinks
    assert _losses(part.run_dir / "metrics.jsonl") == _losses(full.run_dir / "metrics.jsonl")


class _DyingTracker(NullTracker):
    """Test-only: a store that goes away after ``alive`` metric batches."""

    def __init__(self, alive: int):
        super().__init__()
        self.run_id = "dying"
        self.alive = alive
        self.calls = 0

    def log_metrics(self, metrics, step):
        self.calls += 1
        if self.calls > self.alive:
            raise OSError("sqlite3.OperationalError: no such table: runs")
        super().log_metrics(metrics, step)

    def finish(self, status="FINISHED", reason=None):
        if self.calls > self.alive:
            raise OSError("sqlite3.OperationalError: no such table: runs")
        super().finish(status, reason)


def test_tracker_failure_mid_run_degrades_to_the_run_directory(tmp_path, tsearch_lines):
    cfg = smoke(tmp_path, "train.total_kimg=0.192", "eval.every_kimg=0.064",
                "train.log_every_kimg=0.032")
    tracker = _DyingTracker(alive=2)
    said = tsearch_lines
    result = train(cfg, tracker=tracker, evaluate=False)
    assert result.steps == 6
    warnings = [m for m in said if "tracking" in m]
    assert len(warnings) == 1 and "no such table" in warnings[0], said
    assert tracker.calls == 3  # given up after the first failure
    records = _records(result.run_dir / "metrics.jsonl")
    assert len([r for r in records if "train/loss" in r[1]]) == 6  # one per 32 images, none lost
    assert len([r for r in records if "perf/eval_share" in r[1]]) == 3  # one per 64 images
    assert said[-1].startswith("done:")


@pytest.mark.parametrize("case", ["no checkpoint", "missing data root", "unwritable out_dir"])
def test_failure_before_training_still_closes_the_run(tmp_path, case):
    """Every way out of train() ends the tracker's run: none is left RUNNING."""
    tracker = NullTracker()
    cfg = smoke(tmp_path, "train.total_kimg=0.064")
    kwargs = {}
    if case == "no checkpoint":
        kwargs = {"run_dir": tmp_path / "empty", "resume": True}
        error = CheckpointError
    elif case == "missing data root":
        cfg = smoke(tmp_path, "data.name=mnist", f"data.root={tmp_path}/nowhere")
        error = TsearchError
    else:
        (tmp_path / "file").write_text("x")
        cfg = smoke(tmp_path, f"train.out_dir={tmp_path}/file/runs")
        error = TsearchError
    with pytest.raises(error) as info:
        train(cfg, tracker=tracker, evaluate=False, **kwargs)
    assert tracker.status == "FAILED"
    assert tracker.reason and "\n" not in tracker.reason
    assert "\n" not in str(info.value)
