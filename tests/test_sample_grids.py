"""Sample grids: every evaluation writes one, from latents shared by every trial and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMOKE
from mlflow import MlflowClient
from PIL import Image

from tsearch import names
from tsearch.timesteps import load_config
from tsearch.tracker import NullTracker
from tsearch.tracking.mlflow_tracker import MlflowTracker
from tsearch.train import train


class Recording(NullTracker):
    def __init__(self):
        super().__init__()
        self.grid_uploads: list[tuple[str, str | None]] = []

    def log_artifact(self, local_path, artifact_path=None):
        self.grid_uploads.append((str(local_path), artifact_path))


def _cfg(tmp_path, *extra):
    return load_config(SMOKE, [f"train.out_dir={tmp_path}/runs", f"eval.cache_dir={tmp_path}/c",
                               "train.total_kimg=0.128", "eval.every_kimg=0.064",
                               "eval.num_images=80", "eval.ref_images=100", "eval.steps=2",
                               "eval.at_start=true", *extra])


@pytest.mark.slow
def test_every_evaluation_writes_a_grid_from_shared_latents(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, experiment="grids", run_name="trial")
    run = train(_cfg(tmp_path), tracker=tracker)
    grids = sorted(names.RunDir(run.run_dir).samples.glob("grid-*.png"))
    assert [g.name for g in grids] == ["grid-kimg00000.000.png", "grid-kimg00000.064.png",
                                       "grid-kimg00000.128.png"]
    logged = MlflowClient(uri).list_artifacts(tracker.run_id, names.ARTIFACT_SAMPLES)
    assert [a.path for a in logged] == [f"{names.ARTIFACT_SAMPLES}/{g.name}" for g in grids]
    # 64 images of 8x8 in an 8x8 grid with 1-pixel padding: 8 * 9 + 1 = 73 pixels a side.
    first = np.asarray(Image.open(grids[0]))
    assert first.shape[:2] == (73, 73)
    # Training changes the model, so the grid changes; the untrained model's grid is the same
    # in another run with a different training seed (same latents, same initial weights).
    assert not np.array_equal(first, np.asarray(Image.open(grids[-1])))
    other = train(_cfg(tmp_path / "b", "train.total_kimg=0.064", "eval.every_kimg=0.064"),
                  tracker=NullTracker())
    again = np.asarray(Image.open(names.RunDir(other.run_dir).grid(0.0)))
    assert np.array_equal(first, again)


def test_a_grid_is_the_first_images_mapped_to_pixels(tmp_path):
    from tsearch.train.rundir import RunRecorder

    cfg = _cfg(tmp_path)
    tracker = Recording()
    rec = RunRecorder(tracker, tmp_path / "run", cfg)
    x = torch.full((2, 1, 4, 4), -1.0)
    x[1] = 1.0
    rec.write_grid(1.5, x)
    img = np.asarray(Image.open(names.RunDir(tmp_path / "run").grid(1.5)).convert("L"))
    assert img.shape == (6, 11)  # two 4x4 tiles in one row, 1-pixel padding
    assert (img[1:5, 1:5] == 0).all() and (img[1:5, 6:10] == 255).all()  # -1 black, +1 white
