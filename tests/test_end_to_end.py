"""A smoke training run into a real SQLite MLflow store, through the CLI and the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE
from mlflow import MlflowClient

from tsearch.timesteps import load_config
from tsearch.tracking import build_tracker
from tsearch.train import train

pytestmark = pytest.mark.slow


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def test_smoke_run_logs_everything_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
                              f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/art"])
    tracker = build_tracker(cfg.tracking, run_name="smoke-e2e")
    result = train(cfg, tracker=tracker)

    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["config.train.batch_size"] == "32"
    assert run.data.params["config.timesteps.sampler.name"] == "uniform"
    fids = client.get_metric_history(result.run_id, "eval/fid")
    assert len(fids) == len(result.fid_history) >= 2
    assert all(np.isfinite(m.value) and m.value > 0 for m in fids)
    assert [m.step for m in fids] == sorted(m.step for m in fids)
    losses = client.get_metric_history(result.run_id, "train/loss")
    assert len(losses) >= 4
    assert "tsearch.fid_extractor" in run.data.tags

    files = _artifacts(client, result.run_id)
    assert "config.json" in files
    pt = sorted(f for f in files if f.startswith("timesteps/p_t_"))
    assert len(pt) == len(fids)
    assert {"plots/fid_curve.png", "plots/p_t_heatmap.png"} <= set(files)
    local = client.download_artifacts(result.run_id, pt[-1], str(tmp_path / "dl"))
    probs = np.load(local)
    assert probs.shape == (1000,) and probs.sum() == pytest.approx(1.0)
    cfg_json = json.loads(Path(client.download_artifacts(result.run_id, "config.json",
                                                         str(tmp_path / "dl2"))).read_text())
    assert cfg_json["eval"]["num_images"] == 200


def test_cli_train_then_resume_same_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [sys.executable, "-m", "tsearch.cli.main", "train", str(SMOKE), "--set",
            f"tracking.uri={uri}", "--set", f"eval.cache_dir={tmp_path}/c", "--set",
            "train.total_kimg=0.2", "--set", "eval.every_kimg=0.1"]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "done:" in first.stderr and "FID" in first.stderr
    run_dir = next((tmp_path / "tsearch-runs" / "train").iterdir())
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]

    more = [sys.executable, "-m", "tsearch.cli.main", "train", "--resume", str(run_dir),
            "--set", "train.total_kimg=0.3"]
    second = subprocess.run(more, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stderr
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    fids = client.get_metric_history(run_id, "eval/fid")
    assert max(m.step for m in fids) >= 300  # the resumed part logged into the same run
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
