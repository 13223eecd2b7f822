"""`tsearch report`: the analysis on hand-made trial records, and the report of a real tiny grid
search (real Ray, real SQLite MLflow store) checked against the store read independently."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE
from PIL import Image

from tsearch import plots
from tsearch.errors import TsearchError
from tsearch.records import TrialRecord
from tsearch.report import (
    build_report,
    fid_table,
    group_cells,
    kimg_to_target,
    speed_table,
    table_markdown,
    value_at,
    write_report,
)
from tsearch.tracking.queries import parse_param

T = 50


def tsearch(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def record(trial_id: str, fids: list[float], *, method: str | None = "uniform",
           seed: int | None = 1, schedule: str = "linear", sampler: str = "uniform",
           every: int = 1000, probe_per_kimg: float = 0.0, extra: dict | None = None,
           p_t: list[np.ndarray] | None = None) -> TrialRecord:
    """A trial evaluated every ``every`` images with the given FIDs."""
    steps = [every * (i + 1) for i in range(len(fids))]
    values = {**({"method": method} if method is not None else {}),
              **({"train.seed": seed} if seed is not None else {}), **(extra or {})}
    if schedule != "linear":
        values["diffusion.schedule"] = schedule
    snapshots = p_t if p_t is not None else [np.full(T, 1.0 / T)] * len(fids)
    return TrialRecord(
        run_id=f"run-{trial_id}", trial_id=trial_id, values=values,
        config={"diffusion.schedule": schedule, "timesteps.sampler.name": sampler,
                "timesteps.weighting.name": "none", "train.seed": seed if seed is not None else 0},
        fid=list(zip(steps, fids, strict=True)),
        train_forwards=[(s, 3.0 * s) for s in steps],
        probe_forwards=[(s, probe_per_kimg * s / 1000) for s in steps],
        p_t=list(zip(steps, snapshots, strict=False)),
    )


def build(records, **kw):
    return build_report(records, search="s", parent_run_id="p", tracking_uri="sqlite:///x.db",
                        generated="today", **kw)


# --- the analysis ----------------------------------------------------------------------------


def test_kimg_to_target_interpolates_between_bracketing_evaluations():
    kimgs, fids, compute = [1, 2, 3, 4], [100.0, 80.0, 60.0, 40.0], [3e3, 6e3, 9e3, 12e3]
    assert kimg_to_target(kimgs, fids, 70.0, compute) == pytest.approx((2.5, 7500.0))
    assert kimg_to_target(kimgs, fids, 60.0, compute) == pytest.approx((3.0, 9000.0))  # exact
    assert kimg_to_target(kimgs, fids, 120.0, compute) == pytest.approx((1.0, 3000.0))  # at 1st
    assert kimg_to_target(kimgs, fids, 10.0, compute) == (None, None)  # never
    assert kimg_to_target(kimgs, fids, 70.0) == (2.5, None)  # no compute logged
    # The first crossing counts, not a later one after a relapse.
    assert kimg_to_target([1, 2, 3, 4], [100, 50, 90, 40], 75.0)[0] == pytest.approx(1.5)
    assert kimg_to_target([1, 2], [math.nan, 40.0], 75.0)[0] == 2.0


def test_value_at_takes_the_last_log_at_or_before_each_step():
    history = [(100, 1.0), (300, 3.0), (200, 2.0)]
    got = value_at(history, np.array([50, 100, 250, 300, 999]))
    assert np.isnan(got[0]) and got[1:].tolist() == [1.0, 2.0, 3.0, 3.0]


def test_parse_param_recovers_logged_types():
    assert parse_param("101") == 101 and parse_param("0.002") == 0.002
    assert parse_param("1e-05") == 1e-05 and parse_param("None") is None
    assert parse_param("linear") == "linear" and parse_param("[16, 32]") == [16, 32]
    assert parse_param("True") is True and parse_param("a: b: c") == "a: b: c"


def test_cells_means_speedups_and_reached_counts():
    uniform = [[100.0, 80.0, 60.0, 40.0], [110.0, 90.0, 70.0, 50.0], [90.0, 70.0, 50.0, 30.0]]
    fast = [[70.0, 40.0, 35.0, 30.0], [90.0, 60.0, 40.0, 38.0], [100.0, 95.0, 90.0, 85.0]]
    records = [record(f"u{i}", f, seed=i) for i, f in enumerate(uniform)]
    records += [record(f"a{i}", f, seed=i, method="adaptive", sampler="adaptive",
                       probe_per_kimg=600.0) for i, f in enumerate(fast)]
    rep = build(records)
    (block,) = rep.blocks
    assert block.schedule == "linear" and block.columns == [1.0, 2.0, 3.0, 4.0]
    u, a = block.rows
    assert (u.label, a.label, u.n, a.n, u.seeds) == ("uniform", "adaptive", 3, 3, [0, 1, 2])
    assert u.evals[3].mean == pytest.approx(40.0) and u.evals[3].std == pytest.approx(10.0)
    assert a.evals[0].mean == pytest.approx(260 / 3)
    assert a.evals[0].std == pytest.approx(np.std([70, 90, 100], ddof=1))
    assert block.target_fid == pytest.approx(40.0)  # mean of uniform's final FIDs
    # uniform: seed 0 hits 40 at 4 kimg, seed 1 never, seed 2 at 3.5 kimg (50 -> 30).
    assert u.target.n_reached == 2 and u.target.kimg == [4.0, None, pytest.approx(3.5)]
    assert u.target.kimg_mean == pytest.approx(3.75)
    # The headline uses the seed-mean curve: uniform's is [100, 80, 60, 40] -> 4.0 kimg.
    assert u.target.kimg_curve == pytest.approx(4.0)
    assert u.target.compute_curve == pytest.approx(4.0 * 3000)
    assert u.target.ratio_kimg == pytest.approx(1.0) and u.target.ratio_compute == 1.0
    # adaptive per seed: 2.0 kimg, 3.0 kimg (60 -> 40 at 3, then 38), never.
    assert a.target.n_reached == 2
    assert a.target.kimg[:2] == [pytest.approx(2.0), pytest.approx(3.0)]
    assert a.target.kimg_mean == pytest.approx(2.5)
    # Compute: 3 forwards per image + 600 probe forwards per kimg.
    assert a.target.compute_mean == pytest.approx(2.5 * 3600)
    # ...but its mean curve [86.7, 65, 55, 51] never reaches 40: no speed-up is claimed.
    assert a.target.kimg_curve is None and a.target.ratio_kimg is None
    assert any("last evaluation interval" in n for n in block.notes)
    assert any("1 of 3 uniform seeds end above" in n for n in block.notes)

    md = table_markdown(fid_table(block))
    assert "| uniform | 3 | 100.00 ± 10.00 |" in md
    assert "**40.00 ± 10.00**" in md  # best mean of the last column
    speed = table_markdown(speed_table(block))
    assert "| **uniform** | 4.00 | 1.00 | 12k | 1.00 | 2 / 3 | 3.75 ± 0.35 |" in speed
    assert "| adaptive | – | – | – | – | 2 / 3 | 2.50 ± 0.71 |" in speed


def test_mean_curve_speedup_with_probe_compute_charged():
    uniform = [[100.0, 80.0, 60.0, 40.0], [100.0, 80.0, 60.0, 40.0]]
    fast = [[80.0, 40.0, 30.0, 20.0], [60.0, 40.0, 30.0, 20.0]]
    records = [record(f"u{i}", f, seed=i) for i, f in enumerate(uniform)]
    records += [record(f"a{i}", f, seed=i, method="adaptive", sampler="adaptive",
                       probe_per_kimg=1000.0) for i, f in enumerate(fast)]
    (block,) = build(records).blocks
    u, a = block.rows
    assert block.target_fid == pytest.approx(40.0)
    assert a.target.kimg_curve == pytest.approx(2.0)  # mean curve [70, 40, ...]
    assert a.target.ratio_kimg == pytest.approx(4.0 / 2.0)
    assert a.target.compute_curve == pytest.approx(2.0 * 4000)
    assert a.target.ratio_compute == pytest.approx(4.0 * 3000 / (2.0 * 4000))


def test_same_method_on_another_schedule_is_another_row():
    # Two searches merged into one report (e.g. a vp and a flow replication) whose schedule is
    # fixed by their configs, not searched: same labels, different blocks.
    records = [record(f"{s}{seed}", [90.0 - seed, 50.0], method="laplace", seed=seed,
                      schedule="linear", sampler="laplace") for s in "ab" for seed in (1, 2)]
    for r in records[2:]:
        r.config["diffusion.schedule"] = "flow"
    assert all("diffusion.schedule" not in r.values for r in records)
    rep = build(records, baseline="laplace")
    assert [b.schedule for b in rep.blocks] == ["linear", "flow"]
    assert [[(row.label, row.n) for row in b.rows] for b in rep.blocks] == [
        [("laplace", 2)], [("laplace", 2)]]


def test_without_seed_key_every_trial_is_its_own_cell():
    records = [record("t0", [90.0, 50.0], method=None, seed=None, extra={"optim.lr": 0.002}),
               record("t1", [80.0, 45.0], method=None, seed=None, extra={"optim.lr": 0.001}),
               record("t2", [85.0, 60.0], method=None, seed=None, sampler="speed",
                      extra={"optim.lr": 0.001, "timesteps.sampler.name": "speed"})]
    records[0].values["timesteps.sampler.name"] = "uniform"
    records[1].values["timesteps.sampler.name"] = "uniform"
    assert [len(trials) for _, trials in group_cells(records)] == [1, 1, 1]
    rep = build(records)
    rows = rep.blocks[0].rows
    assert [r.n for r in rows] == [1, 1, 1]
    assert [r.label for r in rows] == ["uniform lr=2e-3", "uniform lr=1e-3", "speed lr=1e-3"]
    assert rep.label_header == "cell"
    assert rows[0].evals[1].std is None
    md = table_markdown(fid_table(rep.blocks[0], rep.label_header))
    assert "| uniform lr=2e-3 | 1 | 90.00 | 50.00 |" in md
    # No `uniform` label: the uniform sampler without weighting is the baseline (the first).
    assert rep.blocks[0].baseline is rows[0]
    assert any("2 rows use the uniform sampler" in n for n in rep.blocks[0].notes)
    # Identical values without a seed: still separate rows, told apart by trial id.
    twins = build([record("t0", [9.0], seed=None), record("t1", [8.0], seed=None)])
    assert [r.label for r in twins.blocks[0].rows] == ["uniform (t0)", "uniform (t1)"]


def test_blocks_in_schedule_order_and_trials_stopped_early():
    records = []
    for schedule in ("quad", "sigmoid", "linear", "cosine"):
        records += [record(f"{schedule}-u{s}", [100.0, 50.0, 20.0], seed=s, schedule=schedule)
                    for s in (1, 2)]
    records += [record("lin-s1", [90.0, 60.0, 30.0], seed=1, method="speed", sampler="speed"),
                record("lin-s2", [95.0], seed=2, method="speed", sampler="speed"),
                record("lin-x1", [], seed=1, method="lsm", sampler="lsm")]
    rep = build(records)
    assert [b.schedule for b in rep.blocks] == ["linear", "cosine", "quad", "sigmoid"]
    linear = rep.blocks[0]
    md = table_markdown(fid_table(linear))
    assert "| speed | 2 | **92.50 ± 3.54** | 60.00 (n=1) | 30.00 (n=1) |" in md
    assert "| lsm | 1 | – | – | – |" in md
    assert not any("still running" in n for n in linear.notes)
    records[-1].status = "RUNNING"
    assert "1 trial(s) of this block are still running" in build(records).blocks[0].notes[0]
    lsm = linear.rows[2]
    assert lsm.target.n_reached == 0 and lsm.target.ratio_kimg is None
    assert "| lsm | – | – | – | – | 0 / 1 | – |" in table_markdown(speed_table(linear))


def test_no_evaluations_and_unknown_baseline_are_one_line_errors():
    with pytest.raises(TsearchError, match="no finished evaluations"):
        build([record("t0", []), record("t1", [])])
    with pytest.raises(TsearchError, match="no row labelled 'nope'.*rows: uniform"):
        build([record("t0", [50.0])], baseline="nope")
    rep = build([record("t0", [50.0], method="speed", sampler="speed")])
    assert rep.blocks[0].baseline is None and speed_table(rep.blocks[0]) is None
    assert "no 'uniform' row in this block" in rep.blocks[0].notes[0]


def test_a_seed_run_twice_in_one_cell_is_noted():
    rep = build([record("a", [9.0, 8.0], seed=1), record("b", [9.5, 7.0], seed=1),
                 record("c", [9.0, 6.0], seed=2)])
    (row,) = rep.blocks[0].rows
    assert row.n == 3 and row.seeds == [1, 1, 2]
    assert any("train.seed = 1 more than once" in n for n in rep.blocks[0].notes)
    rep = build([record("a", [9.0, 8.0], seed=1), record("c", [9.0, 6.0], seed=2)])
    assert not any("more than once" in n for n in rep.blocks[0].notes)


def test_written_report_is_offline_and_holds_the_tables(tmp_path):
    ramp = np.linspace(0.5, 1.5, T) / np.linspace(0.5, 1.5, T).sum()
    learned = [np.full(T, 1.0 / T), ramp]
    records = [record(f"u{s}", [100.0, 60.0], seed=s) for s in (1, 2)]
    records += [record(f"a{s}", [90.0, 50.0], seed=s, method="ada+pt|x", sampler="lsm",
                       p_t=learned) for s in (1, 2)]
    paths = write_report(build(records), tmp_path / "out")
    page = paths["html"].read_text()
    assert not re.search(r"https?://", page) and "<script" not in page
    assert set(re.findall(r'src="([^"]{0,22})', page)) == {"data:image/png;base64,"}
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["fid_linear.png", "pt_final_linear.png", "pt_linear_ada_pt_x.png"]
    assert page.count("data:image/png;base64,") == 3
    md = paths["markdown"].read_text()
    assert "| ada+pt\\|x | 2 | **90.00 ± 0.00** |" in md and "](pt_linear_ada_pt_x.png)" in md
    data = json.loads(paths["json"].read_text())
    assert [c["label"] for c in data["cells"]] == ["uniform", "ada+pt|x"]
    assert data["cells"][1]["fid"][1]["mean"] == 50.0 and data["cells"][1]["learned_p_t"]


def test_fid_bands_plot(tmp_path):
    series = {"two seeds": ([1.0, 2.0, 3.0], [300.0, 90.0, 20.0], [30.0, 9.0, 2.0]),
              "one seed": ([1.0, 2.0], [250.0, 80.0], [math.nan, math.nan])}
    path = plots.plot_fid_bands(series, tmp_path / "fid.png", title="FID")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400
    with pytest.raises(ValueError, match="2 kimg values, 2 means and 1 stds"):
        plots.plot_fid_bands({"bad": ([1.0, 2.0], [3.0, 4.0], [1.0])}, tmp_path / "bad.png")


# --- the command -----------------------------------------------------------------------------


def test_unknown_search_is_one_line_exit_1(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = tsearch("report", "nope", "-o", str(tmp_path / "out"), "--tracking-uri", uri,
                   cwd=tmp_path)
    assert proc.returncode == 2  # a read-only command creates no store (tests/test_bad_cli.py)
    assert proc.stderr.startswith(f"error: no MLflow store at {tmp_path}/mlflow.db")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    proc = tsearch("report", "nope", "-o", str(tmp_path / "out"), "--tracking-uri", uri,
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no searches in")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    exp = client.create_experiment("e")
    client.create_run(exp, run_name="other", tags={"tsearch.kind": "search",
                                                  "tsearch.search": "other"})
    proc = tsearch("report", "nope", "-o", str(tmp_path / "out"), cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": uri})  # honoured like `tsearch runs`
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no search 'nope' in {uri}; known searches: other"
    assert not (tmp_path / "out").exists()


# --- a real search ---------------------------------------------------------------------------

SPACE = ("search.space={method: {bundle: {uniform: {timesteps.sampler.name: uniform}, "
         "adaptive: {timesteps.sampler.name: adaptive}}}, train.seed: {choice: [1, 2]}}")


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-search")
    proc = tsearch("search", str(SMOKE), "--set", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                   "--set", f"search.storage_path={tmp}/ray", "--set",
                   f"eval.cache_dir={tmp}/cache", "--set", "search.algorithm=grid",
                   "--set", SPACE, "--set", "search.points_to_evaluate=[]",
                   "--set", "search.asha.enabled=false", "--set", "train.total_kimg=0.4",
                   "--set", "search.name=rep",
                   # All four at once, one thread each: worker start-up dominates such tiny trials
                   # (about 60 s instead of 80 s on 2 busy cores; the FIDs do not change).
                   "--set", "search.max_concurrent=4", "--set", "search.cpus_per_trial=0.5",
                   "--set", "train.threads=1", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def _store_fids(uri: str, search: str = "rep", n: int = 4) -> dict[str, list[list[float]]]:
    """method -> one FID list per seed, straight from the MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(exps, f"tags.`tsearch.search` = '{search}' and "
                                   "tags.`tsearch.kind` = 'search'")
    kids = client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == n
    fids: dict[str, list[list[float]]] = {}
    for kid in kids:
        history = sorted(client.get_metric_history(kid.info.run_id, "eval/fid"),
                         key=lambda m: m.step)
        fids.setdefault(kid.data.params["trial.method"], []).append([m.value for m in history])
    return fids


def _md_table(md: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = md.split(heading, 1)[1].strip().splitlines()
    rows = [line for line in lines[lines.index(next(x for x in lines if x.startswith("|"))):]]
    rows = rows[:next((i for i, x in enumerate(rows) if not x.startswith("|")), len(rows))]
    split = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    return split[0], {r[0].strip("*"): r for r in split[2:]}


def _pm(text: str) -> tuple[float, float | None]:
    parts = text.strip("*").split(" ± ")
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None)


@pytest.mark.slow
def test_report_of_a_real_search_holds_the_stores_values(finished_search):
    tmp = finished_search
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = tmp / "report"
    proc = tsearch("report", "rep", "-o", str(out), "--tracking-uri", uri, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert f"fetching trial runs of search 'rep' from {uri}: 4/4" in proc.stderr
    assert (out / "report.html").is_file() and (out / "report.md").is_file()

    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page) and "<script" not in page
    assert "data:image/png;base64," in page
    assert set(re.findall(r'src="([^"]{0,22})', page)) == {"data:image/png;base64,"}
    with Image.open(out / "pt_linear_adaptive.png") as image:  # the learned p(t) heatmap
        assert image.format == "PNG"

    want = {m: [(float(np.mean(col)), float(np.std(col, ddof=1))) for col in zip(*seeds,
                                                                                 strict=True)]
            for m, seeds in _store_fids(uri).items()}
    assert set(want) == {"uniform", "adaptive"} and all(len(v) == 2 for v in want.values())

    md = (out / "report.md").read_text()
    header, rows = _md_table(md, "### FID at each evaluation point")
    assert header[:2] == ["method \\ kimg", "n"] and header[2:] == ["0.2", "0.4"]
    for method, stats in want.items():
        assert rows[method][1] == "2"
        for j, (mean, std) in enumerate(stats):
            got_mean, got_std = _pm(rows[method][2 + j])
            assert got_mean == pytest.approx(mean, abs=0.006)
            assert got_std == pytest.approx(std, abs=0.006)
    for j in range(2):  # the best mean of each column is bold
        best = min(want, key=lambda m: want[m][j][0])
        assert rows[best][2 + j].startswith("**")

    data = json.loads((out / "report.json").read_text())
    assert data["search"] == "rep" and data["n_trials"] == 4
    cells = {c["label"]: c for c in data["cells"]}
    for method, stats in want.items():
        assert cells[method]["n"] == 2 and cells[method]["seeds"] == [1, 2]
        got = [(e["mean"], e["std"]) for e in cells[method]["fid"]]
        assert got == [(pytest.approx(m, rel=1e-12), pytest.approx(s, rel=1e-12))
                       for m, s in stats]
    finals = [seed[-1] for seed in _store_fids(uri)["uniform"]]
    assert data["blocks"][0]["target_fid"] == pytest.approx(float(np.mean(finals)))
    assert cells["uniform"]["to_target"]["ratio_kimg"] == pytest.approx(1.0)

    _, speed = _md_table(md, "### Training and compute to the baseline's final FID")
    assert speed["uniform"][2] == "1.00" and speed["uniform"][4] == "1.00"
    assert speed["uniform"][5] == f"{cells['uniform']['to_target']['n_reached']} / 2"


@pytest.mark.slow
def test_report_of_two_searches_merges_their_cells(finished_search):
    """A later search (one more seed of uniform, and a new method) reported with the first: the
    comparison `tsearch report replicate-digits search-best-digits` makes in the README."""
    from mlflow import MlflowClient

    tmp = finished_search
    uri = f"sqlite:///{tmp}/mlflow.db"
    space = ("search.space={method: {bundle: {uniform: {timesteps.sampler.name: uniform}, "
             "lognormal: {timesteps.sampler.name: lognormal}}}, train.seed: {choice: [3]}}")
    proc = tsearch("search", str(SMOKE), "--set", f"tracking.uri={uri}",
                   "--set", f"search.storage_path={tmp}/ray", "--set",
                   f"eval.cache_dir={tmp}/cache", "--set", "search.algorithm=grid",
                   "--set", space, "--set", "search.points_to_evaluate=[]",
                   "--set", "search.asha.enabled=false", "--set", "train.total_kimg=0.4",
                   "--set", "search.name=rep2", "--set", "search.cpus_per_trial=1",
                   "--set", "train.threads=1", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp / "report2"
    client = MlflowClient(uri)
    (parent,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   "tags.`tsearch.search` = 'rep' and tags.`tsearch.kind` = "
                                   "'search'")
    run_id = parent.info.run_id
    # The first search named twice (by name and by run id) is read once.
    proc = tsearch("report", "rep", "rep2", run_id, "-o", str(out), "--tracking-uri", uri,
                   cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "report of 2 searches rep + rep2 (6 trials, 3 cells in 1 block(s))" in proc.stdout

    data = json.loads((out / "report.json").read_text())
    assert data["search"] == "rep + rep2" and data["n_trials"] == 6
    cells = {c["label"]: c for c in data["cells"]}
    assert set(cells) == {"uniform", "adaptive", "lognormal"}
    assert cells["uniform"]["seeds"] == [1, 2, 3] and cells["lognormal"]["seeds"] == [3]
    store = _store_fids(uri, "rep2", 2)
    assert [e["mean"] for e in cells["lognormal"]["fid"]] == \
        pytest.approx(store["lognormal"][0], rel=1e-12)
    uniform = _store_fids(uri)["uniform"] + store["uniform"]
    assert data["blocks"][0]["target_fid"] == pytest.approx(
        float(np.mean([seed[-1] for seed in uniform])))
    _, rows = _md_table((out / "report.md").read_text(), "### FID at each evaluation point")
    assert rows["uniform"][1] == "3" and rows["lognormal"][1] == "1"
