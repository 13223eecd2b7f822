"""MLflow reads like a search: run names, the experiment's kind, end reasons, the parent's
description, and `tsearch runs list/show` (text and --json) on a real SQLite store."""

from __future__ import annotations

import json
import math

import pytest
from mlflow import MlflowClient

from tests.cli_harness import run_cli
from tsearch import labels, names
from tsearch.records import TrialRecord
from tsearch.search.confirm import Confirmation, ConfirmRow
from tsearch.search.results import SearchResult
from tsearch.search.summary import markdown
from tsearch.tracking import MlflowTracker, ensure_experiment
from tsearch.tracking.closing import close_trial_run

KIND = "mlflow.experimentKind"


# --- Names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,text", [
    (0.0015, "1.5e-3"), (550.0, "550"), (549.7, "550"), (4.4, "4.4"), (2.0, "2"),
    (0.0123, "0.0123"), (1234.5, "1.23e3"), (999.7, "1e3"), (1e-5, "1e-5"), (-0.003, "-3e-3"),
    (0.0, "0"), (math.inf, "inf"), (5, "5"), (True, "True"), ("cosine", "cosine"),
])
def test_compact_numbers_have_three_significant_digits(value, text):
    assert labels.compact(value) == text


def test_keys_are_their_last_component_unless_two_would_read_the_same():
    keys = ["timesteps.sampler.name", "timesteps.sampler.params.k", "optim.lr", "method",
            "timesteps.weighting.name", "train.seed", "diffusion.schedule"]
    assert list(labels.short_keys(keys).values()) == [
        "sampler", "k", "lr", "method", "weighting", "seed", "schedule"]
    # SpeeD's sampler and weighting both have a tau; the adaptive sampler has an lr.
    assert labels.short_keys(["timesteps.sampler.params.tau", "timesteps.weighting.params.tau",
                              "timesteps.sampler.params.lr", "optim.lr", "train.device"],
                             reserved=["device"]) == {
        "timesteps.sampler.params.tau": "sampler.tau",
        "timesteps.weighting.params.tau": "weighting.tau",
        "timesteps.sampler.params.lr": "sampler.lr", "optim.lr": "optim.lr",
        "train.device": "train.device"}


def test_run_names_put_the_method_first_then_short_compact_values():
    speed = {"optim.lr": 0.0015, "timesteps.sampler.params.tau": 550,
             "timesteps.sampler.name": "speed", "timesteps.sampler.params.k": 4.4}
    assert labels.trial_name(speed) == "speed k=4.4 tau=550 lr=1.5e-3"
    # The sampler comes from the base config when the trial does not choose one.
    assert labels.trial_name({"optim.lr": 3e-4}, sampler="mode") == "mode lr=3e-4"
    # A bundle label is the method; the seed goes last.
    cell = {"train.seed": 101, "method": "uniform+p2", "diffusion.schedule": "cosine",
            "timesteps.sampler.name": "uniform", "timesteps.weighting.name": "p2"}
    assert labels.trial_name(cell, ["method"]) == "uniform+p2 weighting=p2 schedule=cosine seed=101"
    # A confirmation run: its label already spells the values; only the seed is added.
    label = labels.describe(speed)
    assert labels.trial_name({"method": label, **speed, "train.seed": 102}, ["method"]) == \
        "speed k=4.4 tau=550 lr=1.5e-3 seed=102"
    # Keys shorten alike in every trial of a search (its keys), and names fit MLflow's column.
    assert labels.trial_name({"optim.lr": 1e-3}, keys=["timesteps.sampler.params.lr"]) == \
        "uniform optim.lr=1e-3"
    assert len(labels.trial_name({f"a{i}.b": "x" * 20 for i in range(30)})) == 250
    assert labels.plain_params(speed) == {"lr": 0.0015, "tau": 550, "sampler": "speed", "k": 4.4}


def test_parent_description_is_the_summary_in_markdown():
    trials = [TrialRecord(trial_id="t1", status="TERMINATED", values={"optim.lr": 2e-3},
                          fid=[(200, 80.0), (400, 60.5)]),
              TrialRecord(trial_id="t2", status="TERMINATED", values={"optim.lr": 3e-4},
                          fid=[(200, 95.0)])]
    result = SearchResult(name="s", parent_run_id="p", experiment_path=None, trials=trials,
                          best_config=None, tracking_uri="sqlite:///x", seconds=12.0)
    text = markdown(result)
    assert text.splitlines()[:5] == [
        "### search s: best trials (2 run)", "",
        "| trial | status | best FID | kimg | configuration |", "|---|---|---|---|---|",
        "| t1 | TERMINATED | 60.50 | 0.4 | uniform lr=2e-3 |"]
    assert "Unconfirmed" in text
    row = ConfirmRow(label="uniform lr=2e-3", values={}, baseline=False, search_fid=60.5,
                     seeds=[101, 102], finals=[62.0, 64.0], kimg=[0.4, 0.4], run_ids=[None] * 2,
                     mean=63.0, std=1.41)
    base = ConfirmRow(label="a|b", values={}, baseline=True, search_fid=None, seeds=[101, 102],
                      finals=[None, None], kimg=[None, None], run_ids=[None] * 2)
    result.confirmation = Confirmation(seeds=[101, 102], rows=[row, base], baseline="a|b",
                                       target_fid=None, notes=["one note"])
    text = markdown(result)
    assert "### confirmed ranking: final FID over fresh seeds 101, 102" in text
    # Columns: search FID, confirmed, per seed, vs leader (none for the leader), kimg to the
    # target, speed-up kimg / compute (none without a baseline curve).
    assert "| 1 | uniform lr=2e-3 | 60.50 | 63.00 ± 1.41 | 62.0 64.0 | - | - | - / - |" in text
    assert "| 2 | a\\|b (baseline) | - | failed | - - |" in text  # a | cannot split the row
    assert "- note: one note" in text and "**confirmed winner: uniform lr=2e-3, FID 63.00" in text


# --- A real store ---------------------------------------------------------------------------------
def test_experiments_are_of_training_runs_new_and_old(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("old")  # as an older tsearch made it: no kind
    guessed = client.create_experiment("guessed", tags={KIND: "genai_development_inferred"})
    chosen = client.create_experiment("chosen", tags={KIND: "genai_development"})
    new = ensure_experiment(uri, "new")
    assert ensure_experiment(uri, "old") == old and ensure_experiment(uri, "guessed") == guessed
    MlflowTracker(uri, experiment="chosen").finish()
    kinds = {e: client.get_experiment(e).tags.get(KIND) for e in (new, old, guessed, chosen)}
    assert kinds == {new: "custom_model_development", old: "custom_model_development",
                     guessed: "custom_model_development", chosen: "genai_development"}


def _trial(uri: str, parent: str, trial_id: str, values: dict, fids: list[tuple[int, float]],
           total_kimg: float = 0.4, phase: str = names.PHASE_SEARCH) -> MlflowTracker:
    """A trial run as the trainable leaves it: tags, values, config, metrics at images seen."""
    run = MlflowTracker(uri, experiment="ux", parent_run_id=parent,
                        run_name=labels.trial_name(values, ["method"]),
                        tags={names.TAG_KIND: names.KIND_TRIAL, names.TAG_TRIAL_ID: trial_id,
                              names.TAG_SEARCH: "ux", names.TAG_PHASE: phase})
    run.log_params({names.PARAM_TRIAL: values, **labels.plain_params(values),
                    names.PARAM_CONFIG: {"train": {"total_kimg": total_kimg}}})
    for step, fid in fids:
        run.log_metrics({names.FID: fid, names.PROGRESS_KIMG: step / 1000,
                         names.PROBE_FORWARDS: 2.0 * step, names.TRAIN_FORWARDS: 3.0 * step,
                         names.PERF_EVAL_SHARE: 0.3, names.PERF_OVERHEAD_SHARE: 0.1}, step)
    run.flush()
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A search whose trials ended every way: completed, stopped by ASHA, failed, still running,
    and one from before end reasons were recorded; then a confirmation run."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('ux')}/mlflow.db"
    parent = MlflowTracker(uri, experiment="ux", run_name="ux",
                           tags={names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: "ux"})
    parent.log_metrics({names.SEARCH_BEST_FID: 50.0}, step=0)
    done = _trial(uri, parent.run_id, "t_done", {"timesteps.sampler.name": "speed",
                                                 "timesteps.sampler.params.k": 5.0,
                                                 "optim.lr": 0.002}, [(200, 70.0), (400, 50.0)])
    done.finish()  # its last report ended its thread: FINISHED, like a stopped one
    close_trial_run(uri, "t_done", "FINISHED", "n", end_reason=names.END_FINISHED,
                    parent_run_id=parent.run_id)
    stopped = _trial(uri, parent.run_id, "t_stop", {"timesteps.sampler.name": "uniform",
                                                    "optim.lr": 0.0003}, [(224, 90.0)])
    close_trial_run(uri, "t_stop", "FINISHED", "n", end_reason=names.stopped_at(0.2, asha=True),
                    parent_run_id=parent.run_id)  # the actor went before the run was closed
    stopped.finish()
    failed = _trial(uri, parent.run_id, "t_fail", {"timesteps.sampler.name": "uniform",
                                                   "optim.lr": 1.0}, [])
    failed.finish("FAILED", "loss diverged at step 3")
    close_trial_run(uri, "t_fail", "FAILED", "n", end_reason=names.failed_with("error.txt"),
                    parent_run_id=parent.run_id)
    _trial(uri, parent.run_id, "t_run", {"timesteps.sampler.name": "uniform",
                                         "optim.lr": 0.001}, [(200, 75.0)])
    old = _trial(uri, parent.run_id, "t_old", {"timesteps.sampler.name": "uniform",
                                               "optim.lr": 0.0005}, [(200, 85.0)])
    old.finish()  # an older store: no end reason, stopped below its budget
    confirm = _trial(uri, parent.run_id, "c_0", {"method": "speed k=5 lr=2e-3",
                                                 "train.seed": 101}, [(400, 55.0)],
                     phase=names.PHASE_CONFIRM)
    confirm.finish()
    parent.finish()
    return uri


def test_end_reasons_are_recorded_and_read_back(store):
    client = MlflowClient(store)
    runs = {r.data.tags[names.TAG_TRIAL_ID]: r
            for r in client.search_runs([client.get_experiment_by_name("ux").experiment_id],
                                        f"tags.`{names.TAG_KIND}` = 'trial'")}
    assert {k: (r.info.status, r.data.tags.get(names.TAG_END_REASON))
            for k, r in runs.items()} == {
        "t_done": ("FINISHED", "finished"),
        "t_stop": ("FINISHED", "stopped by ASHA at rung 0.2 kimg"),
        "t_fail": ("FAILED", "failed: loss diverged at step 3"),  # the run's own reason
        "t_run": ("RUNNING", None), "t_old": ("FINISHED", None), "c_0": ("FINISHED", None)}
    assert runs["t_stop"].data.tags[names.TAG_ENDED_BY] == "n"  # closed by the driver
    assert runs["t_done"].info.run_name == "speed k=5 lr=2e-3"
    assert runs["c_0"].info.run_name == "speed k=5 lr=2e-3 seed=101"


def test_runs_show_json_is_what_the_store_holds(capfd, store):
    result = run_cli(capfd, "runs", "show", "ux", "--tracking-uri", store, "--json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    client = MlflowClient(store)
    parent = client.get_run(shown["run_id"])
    assert (shown["name"], shown["status"], shown["phase"], shown["best_fid"]) == (
        parent.info.run_name, parent.info.status, "confirm", 50.0)
    assert shown["trial_counts"] == {"search": 5, "confirm": 1}
    assert shown["ended"] == {"finished": 2, "stopped": 2, "failed": 1, "running": 1}
    assert [t["trial_id"] for t in shown["trials"]] == [  # search phase first, best first
        "t_done", "t_run", "t_old", "t_stop", "t_fail", "c_0"]
    for t in shown["trials"]:
        run = client.get_run(t["run_id"])
        fids = [m.value for m in client.get_metric_history(t["run_id"], names.FID)]
        m = run.data.metrics
        assert t["name"] == run.info.run_name and t["status"] == run.info.status
        assert t["phase"] == run.data.tags[names.TAG_PHASE]
        assert t["end_reason"] == run.data.tags.get(names.TAG_END_REASON, t["end_reason"])
        assert t["kimg"] == m.get(names.PROGRESS_KIMG)
        assert t["best_fid"] == (min(fids) if fids else None)
        assert t["last_fid"] == m.get(names.FID)
        assert t["probe_forwards"] == m.get(names.PROBE_FORWARDS)
        assert {k: str(v) for k, v in t["values"].items()} == names.strip_prefix(
            run.data.params, names.PARAM_TRIAL)
        assert t["label"] == run.info.run_name
    by_id = {t["trial_id"]: t for t in shown["trials"]}
    # Without the tag: from the status, or from the budget the run did not reach.
    assert by_id["t_old"]["end_reason"] == "stopped at 0.2 kimg"
    assert by_id["c_0"]["end_reason"] == "finished" and by_id["t_run"]["end_reason"] is None


def test_runs_show_and_list_text(capfd, store):
    result = run_cli(capfd, "runs", "show", "ux", "--tracking-uri", store)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("search ux (") and ", phase confirm, 5 + 1 confirm trials " \
        "(2 finished, 2 stopped, 1 failed, 1 running), best FID 50.00" in lines[0]
    stop = next(x for x in lines if x.lstrip().startswith("t_stop "))
    assert stop.split()[:12] == ["t_stop", "search", "FINISHED", "stopped", "by", "ASHA", "at",
                                 "rung", "0.2", "kimg", "0.224", "90.00"]
    assert stop.endswith("uniform lr=3e-4") and "eval  30% other  10%" in stop
    fail = next(x for x in lines if x.lstrip().startswith("t_fail "))
    assert "FAILED    failed: loss diverged at step 3" in fail and " - " in fail
    result = run_cli(capfd, "runs", "list", "--tracking-uri", store)
    assert result.code == 0, result.err
    row = next(x for x in result.out.splitlines() if x.startswith("ux "))
    assert row.split()[2:] == ["FINISHED", "confirm", "5", "+", "1", "confirm", "2",
                               "finished,", "2", "stopped,", "1", "failed,", "1", "running",
                               "50.00"]
    result = run_cli(capfd, "runs", "list", "--tracking-uri", store, "--json")
    listed = json.loads(result.out)
    assert [(s["name"], s["phase"], s["trial_counts"]) for s in listed] == [
        ("ux", "confirm", {"search": 5, "confirm": 1})]
