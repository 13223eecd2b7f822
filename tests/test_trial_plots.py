"""Plots of a run its caller stopped (Ray Tune's ASHA), drawn afterwards by the search's driver.

Real training on the smoke config and a real SQLite MLflow store; no Ray (a Ray import here
would break later in-process searches, see test_tune_state.py).
"""

from __future__ import annotations

import cli_harness
import pytest
from conftest import SMOKE
from mlflow import MlflowClient

from tsearch.search.trial_plots import complete_plots
from tsearch.timesteps import load_config
from tsearch.tracking import MlflowTracker
from tsearch.train import RunStopped, train
from tsearch.train.rundir import plot_names


@pytest.mark.slow
def test_stopped_run_leaves_its_plots_to_the_driver(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(SMOKE, [f"eval.cache_dir={tmp_path}/cache", "train.total_kimg=0.128",
                              "eval.every_kimg=0.064", "eval.num_images=100",
                              "timesteps.weighting.name=uncertainty"])  # a learned w(t) too
    tracker = MlflowTracker(uri, experiment="plots", run_name="trial")
    reports: list[float] = []

    def on_report(metrics, ckpt):  # Tune's scheduler stops the trial at its second report
        reports.append(metrics["kimg"])
        if len(reports) == 2:
            raise RunStopped

    trial_dir = tmp_path / "trial"
    run_dir = trial_dir / "run"
    with pytest.raises(RunStopped):
        train(cfg, tracker=tracker, run_dir=run_dir, on_report=on_report)
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"  # ended at once, nothing drawn
    assert not list(run_dir.glob("*.png")) and not client.list_artifacts(run.info.run_id, "plots")
    assert plot_names(run_dir) == ["p_t_heatmap.png", "w_t_heatmap.png", "fid_curve.png"]

    # A driver that cannot read the run directory (a bucket) draws from the MLflow run ...
    with cli_harness.logged() as said:  # what complete_plots warns
        added = complete_plots(None, tracker.run_id, uri, "uniform")
        assert sorted(added) == ["fid_curve.png", "p_t_heatmap.png"], said
        # ... one that can draws from it, only what the run lacks, and nothing once it has them.
        assert complete_plots(str(trial_dir), tracker.run_id, uri,
                              "uniform") == ["w_t_heatmap.png"]
        assert complete_plots(str(trial_dir), tracker.run_id, uri, "uniform") == []
    assert not said
    logged = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "plots")}
    assert set(logged) == {"plots/fid_curve.png", "plots/p_t_heatmap.png",
                           "plots/w_t_heatmap.png"} and all(logged.values())
    assert {p.name for p in run_dir.glob("*.png")} == set(plot_names(run_dir))
