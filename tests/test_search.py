"""The search with real Ray (started by the command under test) and a real SQLite MLflow store."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SMOKE
from mlflow import MlflowClient


def tsearch(*args: str, cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)


def common(tmp_path: Path) -> list[str]:
    return ["--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "--set", f"search.storage_path={tmp_path}/ray",
            "--set", f"eval.cache_dir={tmp_path}/cache"]


def children(client: MlflowClient, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_of(client: MlflowClient, name: str):
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`tsearch.search` = '{name}' and "
                              "tags.`tsearch.kind` = 'search'")
    assert len(runs) == 1
    return runs[0]


def plots_of(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, "plots")}


TRIAL_PLOTS = {"plots/fid_curve.png", "plots/p_t_heatmap.png"}
# What Ray and PyTorch print on every search unless --verbose (search/console.py).
RAY_NOISE = ("Configuration for experiment", "tensorboard", "Checkpoint successfully created",
             "Token authentication is", "batching rule", "A new study created")


def test_dry_run_prints_config_and_space(tmp_path):
    proc = tsearch("search", str(SMOKE), "--dry-run", *common(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "timesteps.sampler.params.k: float [2, 8]  when timesteps.sampler.name=speed" \
        in proc.stdout
    cfg = yaml.safe_load(proc.stdout.split("# search")[0])
    assert cfg["search"]["num_samples"] == 3
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("override,needle", [
    ("search.space={timesteps.sampler.params.kk: {float: [1, 2]}}", "has no hyperparameter 'kk'"),
    ("search.space={optim.lrr: {float: [1, 2]}}", "not a config field"),
    ("search.space={optim.lr: {float: [2, 1]}}", "lo < hi"),
    ("search.space={timesteps.sampler.name: {choice: [uniform, nope]}}", "choose among"),
    # A range outside the field's bounds (Params >= 2) or of the wrong type, before any trial.
    ("search.space={timesteps.sampler.name: {choice: [uniform, adaptive]}, "
     "timesteps.sampler.params.queue_size: {int: [0, 50], when: {timesteps.sampler.name: "
     "adaptive}}}", "queue_size (adaptive): int value 0 is not allowed: Input should be "
     "greater than or equal to 2"),
    ("search.space={optim.lr: {float: [1.0e-4, 2.0], log: true}}", "float value 2.0 is not "
     "allowed"),
    ("search.space={train.batch_size: {float: [8, 64]}}", "valid integer"),
    ("search.space={diffusion.schedule: {choice: [linear, cosin]}}", "choice value 'cosin'"),
    ("search.algorithm=annealing", "unknown algorithm; choose one of gp, grid, random, tpe"),
])
def test_bad_space_is_one_line_exit_2(tmp_path, override, needle):
    proc = tsearch("search", str(SMOKE), "--set", override, *common(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "ray").exists()  # refused before Ray or any trial started


@pytest.mark.slow
def test_unreachable_mlflow_and_ray_fail_fast(tmp_path):
    start = time.monotonic()
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--set",
                   "tracking.uri=http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "unreachable" in proc.stderr
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--address", "127.0.0.1:9",
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "Ray cluster at '127.0.0.1:9' is unreachable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "ray" / "smoke").exists() or not any(
        (tmp_path / "ray" / "smoke").glob("run_trial*"))


@pytest.mark.slow
def test_smoke_search_asha_mlflow_export_and_train(tmp_path):
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--verbose", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert "Configuration for experiment" in proc.stdout  # --verbose: Ray's own output too
    # --verbose: where the wall time went, stage by stage, adding up to the process's total.
    timing = proc.stderr.strip().splitlines()[-1]
    assert timing.startswith("time: start-up (Python and imports) "), timing
    seconds = {name.strip(): float(s) for name, s in re.findall(r"([^,:]+?) (\d+\.\d) s", timing)}
    for stage in ("Ray start", "MLflow parent run", "search phase (Tune and its trials)",
                  "summary (table and plots)", "Ray stop"):
        assert seconds[stage] >= 0, timing
    assert abs(sum(v for k, v in seconds.items() if k != "total")
               - seconds["total"]) < 0.5, timing

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = parent_of(client, "smoke")
    assert parent.info.status == "FINISHED"
    kids = children(client, parent.info.run_id)
    assert len(kids) == 3
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    assert all(k.data.tags["tsearch.kind"] == "trial" for k in kids)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "fid_vs_kimg.png", "best_config.yaml",
            "best_trials_p_t.png"} <= files

    rows = list(csv.DictReader((tmp_path / "ray" / "smoke" / "summary" / "trials.csv").open()))
    assert len(rows) == 3
    assert {r["node_ip"] for r in rows} == {"127.0.0.1"}  # local Ray stays on loopback
    kimgs = sorted(float(r["kimg"]) for r in rows)
    assert kimgs[0] < 0.4 <= kimgs[-1], kimgs  # ASHA stopped at least one trial at its rung
    for kid in kids:  # FID recorded at every rung the trial reached; plots however it ended
        assert client.get_metric_history(kid.info.run_id, "eval/fid")
        assert plots_of(client, kid.info.run_id) == TRIAL_PLOTS, kid.data.tags

    # MLflow reads like a search: the UI opens on training runs, named by method and values,
    # the values are columns of their own, each run says why it ended, the parent its summary.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert sorted(k.info.run_name for k in kids) == ["speed k=5 lr=2e-3", "uniform lr=2e-3",
                                                     "uniform lr=3e-4"]
    for kid in kids:
        params = kid.data.params
        assert params["lr"] == params["trial.optim.lr"]
        assert params.get("k") == params.get("trial.timesteps.sampler.params.k")
        assert params["sampler"] == params["trial.timesteps.sampler.name"]
        kimg = kid.data.metrics["progress/kimg"]
        assert kid.data.tags["tsearch.end_reason"] == (
            "finished" if kimg >= 0.4 else "stopped by ASHA at rung 0.2 kimg"), (kimg, kid)
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("### search smoke: best trials (3 run)\n\n| trial | status |")
    assert all(f"| {r['trial_id']} | " in note for r in rows)

    best = tmp_path / "best.yaml"
    proc = tsearch("export", "best", "--search", "smoke", "-o", str(best),
                   "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exported = yaml.safe_load(best.read_text())
    assert exported["timesteps"]["sampler"]["name"] in ("uniform", "speed")
    assert "search" not in exported
    proc = tsearch("train", str(best), "--set", "train.total_kimg=0.1",
                   "--set", f"tracking.uri=sqlite:///{tmp_path}/train.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "done:" in proc.stderr

    store = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    ended = {"finished": 0, "stopped": 0}
    for kid in kids:
        ended[kid.data.tags["tsearch.end_reason"].split()[0]] += 1
    proc = tsearch("runs", "list", *store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("smoke "))
    assert re.search(rf"FINISHED +search +3 +{ended['finished']} finished, {ended['stopped']} "
                     r"stopped +\d+\.\d\d$", line), proc.stdout
    proc = tsearch("runs", "list", *store, "--json", cwd=tmp_path)
    listed = json.loads(proc.stdout)
    assert [(s["name"], s["phase"], s["trial_counts"], s["ended"]) for s in listed] == [
        ("smoke", "search", {"search": 3}, ended)]
    proc = tsearch("runs", "show", "smoke", *store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for kid in kids:  # one line per trial: phase, status, why it ended, values
        line = next(x for x in proc.stdout.splitlines() if kid.info.run_id in x)
        assert re.search(rf"search +FINISHED +{kid.data.tags['tsearch.end_reason']} ", line)
        assert line.endswith(kid.info.run_name)
    # Each trial's wall time split (perf/*, logged at its evaluations): "eval  NN% other  NN%".
    shares = re.findall(r"eval +(\d+)% other +(\d+)%", proc.stdout)
    assert len(shares) == 3, proc.stdout
    assert all(0 < int(e) + int(o) < 100 for e, o in shares), shares

    # --json: the same, as the store holds it.
    proc = tsearch("runs", "show", "smoke", *store, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["name"], shown["run_id"], shown["status"], shown["phase"]) == (
        "smoke", parent.info.run_id, "FINISHED", "search")
    assert shown["best_fid"] == pytest.approx(parent.data.metrics["search/best_fid"])
    by_id = {t["run_id"]: t for t in shown["trials"]}
    assert set(by_id) == {k.info.run_id for k in kids}
    for kid in kids:
        t, metrics = by_id[kid.info.run_id], kid.data.metrics
        fids = [m.value for m in client.get_metric_history(kid.info.run_id, "eval/fid")]
        assert t["name"] == kid.info.run_name and t["phase"] == "search"
        assert t["trial_id"] == kid.data.tags["tsearch.trial_id"]
        assert t["status"] == kid.info.status
        assert t["end_reason"] == kid.data.tags["tsearch.end_reason"]
        assert t["kimg"] == pytest.approx(metrics["progress/kimg"])
        assert t["best_fid"] == pytest.approx(min(fids))
        assert t["last_fid"] == pytest.approx(metrics["eval/fid"])
        assert t["probe_forwards"] == pytest.approx(metrics["compute/probe_forwards"])
        assert {k: str(v) for k, v in t["values"].items()} == {
            k[len("trial."):]: v for k, v in kid.data.params.items() if k.startswith("trial.")}
    order = [by_id[k]["best_fid"] for k in by_id]
    assert [t["best_fid"] for t in shown["trials"]] == sorted(order)  # best first


@pytest.mark.slow
def test_trials_reuse_a_process_after_asha_stops_one(tmp_path):
    # search.reuse_actors (default): a stopped trial's process trains the next trial, which
    # must run normally (Tune errors it when the stopped trial's thread is slow to end).
    # Gradvar's probes on an attention model: torch.func warns about attention at each probe.
    points = ("search.points_to_evaluate=[{optim.lr: 2.0e-3}, {optim.lr: 3.0e-4}, "
              "{optim.lr: 1.0e-3}]")
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--set", "search.num_samples=3",
                   "--set", "search.max_concurrent=1", "--set", points,
                   "--set", "search.space={optim.lr: {float: [3.0e-4, 3.0e-3], log: true}}",
                   "--set", "timesteps.sampler.name=gradvar",
                   "--set", "model.attention=[false, true]",
                   "--set", "timesteps.sampler.params.probe_every=2",
                   "--set", "timesteps.sampler.params.rows_per_probe=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The default console: our lines and the table, none of Ray's or PyTorch's routine output.
    console = proc.stdout + proc.stderr
    for noise in RAY_NOISE:
        assert noise.lower() not in console.lower(), console
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kids = sorted(children(client, parent_of(client, "smoke").info.run_id),
                  key=lambda k: k.info.start_time)
    assert len(kids) == 3 and all(k.info.status != "FAILED" for k in kids), kids
    assert len({k.data.tags["tsearch.worker_pid"] for k in kids}) == 1  # one process
    reached = [max(m.step for m in client.get_metric_history(k.info.run_id, "eval/fid"))
               for k in kids]
    total = max(reached)
    assert reached[1] < total, reached  # the slow learner was stopped at its rung ...
    assert reached[2] >= 200, reached  # ... and the trial after it trained in its process
    evals = sum(len(client.get_metric_history(k.info.run_id, "eval/fid")) for k in kids)
    assert len(re.findall(r"^  \w{8} .*kimg +[\d.]+  FID +[\d.]+$", proc.stderr,
                          re.M)) == evals, proc.stderr  # one line per evaluation ...
    assert len(re.findall(r"^  \w{8} ended at ", proc.stderr, re.M)) == 3  # ... per trial end
    assert "search smoke: best trials (3 run" in proc.stdout
    # Every trial has its plots: the stopped one, and the last one, stopped at its end as the
    # search ended (ASHA stops a trial at max_t too), drawn by the driver.
    for kid in kids:
        assert plots_of(client, kid.info.run_id) == TRIAL_PLOTS, kid.data.tags


@pytest.mark.slow
def test_diverging_trial_fails_and_search_completes(tmp_path):
    # weight_decay 1e6 at lr 1 multiplies the weights by -999999 per step: inf within steps.
    points = ("search.points_to_evaluate=[{optim.weight_decay: 0.0}, "
              "{optim.weight_decay: 1.0e6}]")
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--set", "search.num_samples=2",
                   "--set", points, "--set", "search.max_failures=0", "--set", "optim.lr=1.0",
                   "--set", "search.asha.enabled=false",
                   "--set", "search.space={optim.weight_decay: {choice: [0.0, 1.0e6]}}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kids = children(client, parent_of(client, "smoke").info.run_id)
    statuses = sorted(k.info.status for k in kids)
    assert statuses == ["FAILED", "FINISHED"], statuses
    failed = next(k for k in kids if k.info.status == "FAILED")
    assert "diverged" in failed.data.tags["tsearch.failure_reason"]
    assert failed.data.tags["tsearch.end_reason"] == \
        f"failed: {failed.data.tags['tsearch.failure_reason']}"
    # The quiet console still shows the failure: our line and Ray's error with its traceback.
    assert re.search(r"^  \w{8} failed \(see its MLflow run", proc.stderr, re.M), proc.stderr
    assert "Trial task failed for trial" in proc.stderr and "DivergenceError" in proc.stderr


@pytest.mark.slow
def test_search_where_no_trial_evaluates_exits_non_zero(tmp_path):
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--set", "search.num_samples=1",
                   "--set", "search.points_to_evaluate=[{optim.weight_decay: 1.0e6}]",
                   "--set", "search.max_failures=0", "--set", "optim.lr=1.0",
                   "--set", "search.space={optim.weight_decay: {choice: [1.0e6]}}",
                   cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no trial of search 'smoke' reached an evaluation" in last and "diverged" in last
    # The failed trial is still on record, with its summary.
    assert (tmp_path / "ray" / "smoke" / "summary" / "trials.csv").is_file()


@pytest.mark.slow
def test_grid_search_runs_exactly_its_cells(tmp_path):
    # A bundle can switch the process: flow matching's four settings are given together.
    space = ("search.space={method: {bundle: {u+w: {timesteps.sampler.name: uniform}, "
             "s: {timesteps.sampler.name: speed, timesteps.weighting.name: speed}, "
             "f: {timesteps.sampler.name: mode, diffusion.process: flow, diffusion.schedule: flow, "
             "diffusion.prediction: v, eval.method: euler}}}, "
             "train.seed: {choice: [5, 6]}}")
    proc = tsearch("search", str(SMOKE), *common(tmp_path), "--set", "search.algorithm=grid",
                   "--set", space, "--set", "search.points_to_evaluate=[]",
                   "--set", "search.asha.enabled=false", "--set", "train.total_kimg=0.2",
                   "--set", "search.name=grid", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "ray" / "grid" / "summary" / "trials.csv").open()))
    cells = sorted((r["method"], r["timesteps.sampler.name"], r["timesteps.weighting.name"],
                    r["train.seed"]) for r in rows)
    assert re.search(r"u\+w\s+kimg\s+0\.2", proc.stderr)  # progress names the bundle
    assert cells == [("f", "mode", "", "5"), ("f", "mode", "", "6"),
                     ("s", "speed", "speed", "5"), ("s", "speed", "speed", "6"),
                     ("u+w", "uniform", "", "5"), ("u+w", "uniform", "", "6")]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kids = children(client, parent_of(client, "grid").info.run_id)
    used = sorted((k.data.params["config.timesteps.sampler.name"],
                   k.data.params["config.diffusion.process"], k.data.params["config.eval.method"],
                   k.data.params["config.train.seed"]) for k in kids)
    assert used == [("mode", "flow", "euler", "5"), ("mode", "flow", "euler", "6"),
                    ("speed", "vp", "ddim", "5"), ("speed", "vp", "ddim", "6"),
                    ("uniform", "vp", "ddim", "5"), ("uniform", "vp", "ddim", "6")]
    for kid in kids:  # every trial, flow matching's too, was evaluated at its end
        fids = client.get_metric_history(kid.info.run_id, "eval/fid")
        assert fids and all(math.isfinite(m.value) for m in fids)
        assert plots_of(client, kid.info.run_id) == TRIAL_PLOTS
    assert "done:" not in proc.stderr  # each trial's end is the driver's one line


@pytest.mark.slow
def test_random_search_draws_the_seeded_sequence(tmp_path):
    import optuna

    from tsearch.search.space import SearchSpace
    from tsearch.timesteps import load_config

    space = "search.space={optim.lr: {float: [1.0e-3, 3.0e-3], log: true}}"
    args = ["--set", space, "--set", "search.algorithm=random", "--set", "search.seed=11",
            # All three at once (one thread each): the draws do not depend on the order.
            "--set", "search.num_samples=3", "--set", "search.max_concurrent=3",
            "--set", "search.cpus_per_trial=0.5", "--set", "train.threads=1",
            "--set", "search.points_to_evaluate=[]", "--set", "search.asha.enabled=false",
            "--set", "train.total_kimg=0.2", "--set", "search.name=rand"]
    proc = tsearch("search", str(SMOKE), *common(tmp_path), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "ray" / "rand" / "summary" / "trials.csv").open()))
    got = sorted(float(r["optim.lr"]) for r in rows)
    sp = SearchSpace.from_config(load_config(SMOKE, [a for a in args if a != "--set"]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    want = []
    for _ in range(3):
        trial = study.ask()
        sp.define_by_run()(trial)
        want.append(trial.params["optim.lr"])
    assert got == pytest.approx(sorted(want), rel=1e-9)


@pytest.mark.parametrize("name,trials,needle", [
    ("cifar10-paper", 48, "timesteps.sampler.name: choice"),
    ("quickstart", 12, "timesteps.sampler.name: choice"),
    ("replicate-digits", 45, "method: bundle uniform: timesteps.sampler.name=uniform"),
    ("replicate-adaptive", 33, "adaptive+bonus: timesteps.sampler.name=adaptive"),
    ("replicate-adaptive-stable", 18, "timesteps.sampler.params.preset=stable"),
    ("replicate-modern", 18, "uniform+uncertainty: timesteps.sampler.name=uniform"),
    ("replicate-flow", 21, "mode: timesteps.sampler.name=mode"),
    ("quickstart-flow", 12, "timesteps.sampler.name: choice"),
])
def test_shipped_search_configs_pass_dry_run(tmp_path, name, trials, needle):
    proc = tsearch("search", str(ROOT / "experiments" / f"{name}.yaml"), "--dry-run",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"# search '{name}': {trials} trials" in proc.stdout
    assert needle in proc.stdout
    flow = name.endswith("-flow")  # flow matching, with the flow sampler, in every trial
    assert ("  process: flow" in proc.stdout) == flow
    assert ("  method: euler" in proc.stdout) == flow


def test_replication_grid_has_every_cell_once(tmp_path):
    proc = tsearch("search", str(ROOT / "experiments" / "replicate-digits.yaml"), "--dry-run",
                   cwd=tmp_path)
    cells = [line.split(": ", 1)[1] for line in proc.stdout.splitlines()
             if line.startswith("# cell")]
    parsed = [dict(kv.split("=", 1) for kv in c.split(", ")) for c in cells]
    assert len(parsed) == len({tuple(sorted(p.items())) for p in parsed}) == 45
    by_method: dict[str, set] = {}
    for p in parsed:
        by_method.setdefault(p["method"], set()).add(
            (p.get("diffusion.schedule", "linear"), p["train.seed"]))
    assert len(by_method) == 9
    for method, cellset in by_method.items():
        schedules = {"linear", "cosine", "quad"} if method in ("uniform", "speed", "adaptive") \
            else {"linear"}
        assert cellset == {(s, seed) for s in schedules for seed in ("101", "102", "103")}
