"""`tsearch report`'s page in a real browser (headless Chromium, Debian's package): every figure
decodes and shows, and the tables on screen hold the MLflow store's values.

Runs a real tiny grid search (real Ray, real SQLite MLflow store), reports it, and opens
report.html through ``tests/browser.py``. The full-page screenshot goes to
``$TSEARCH_TEST_ARTIFACTS`` (``.ci/run`` sets it) or the test's tmp_path.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import INSTALL_HINT, find_chromium, inspect_page
from conftest import SMOKE
from PIL import Image, ImageStat

SEARCH = "browser"
METHODS = ("uniform", "adaptive")  # adaptive learns p(t): the page also gets its heatmap
SPACE = ("search.space={method: {bundle: {uniform: {timesteps.sampler.name: uniform}, "
         "adaptive: {timesteps.sampler.name: adaptive}}}, train.seed: {choice: [1, 2]}}")
WIDTH = 1200


def tsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def chromium() -> str:
    """The browser; missing, it fails the test in CI (which installs it) and skips it elsewhere."""
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return exe


def store(uri: str) -> tuple[str, dict[str, list[list[tuple[int, float]]]]]:
    """The search's parent run id and, per method, each seed's (step, FID) evaluations."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(exps, f"tags.`tsearch.search` = '{SEARCH}' and "
                                   "tags.`tsearch.kind` = 'search'")
    kids = client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    fids: dict[str, list[list[tuple[int, float]]]] = {}
    for kid in kids:
        history = sorted(client.get_metric_history(kid.info.run_id, "eval/fid"),
                         key=lambda m: m.step)
        fids.setdefault(kid.data.params["trial.method"], []).append(
            [(m.step, m.value) for m in history])
    return parent.info.run_id, fids


# The page's number formats (tsearch/report/render.py), restated: a change shows up here.
def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f2(mean) if std is None else f"{f2(mean)} ± {f2(std)}"


def si(x: float | None) -> str:
    if x is None:
        return "–"
    unit, scale = next(((u, s) for u, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(x) >= s),
                       ("", 1.0))
    return f"{x / scale:.3g}{unit}"


def texts(table: dict) -> list[list[str]]:
    return [[c["text"].replace("\xa0", " ") for c in row] for row in table["rows"]]


def inside(box: dict, page: dict) -> bool:
    return (box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= page["width"] + 0.5
            and box["y"] + box["height"] <= page["height"] + 0.5)


@pytest.mark.slow
def test_report_page_in_chromium_shows_every_figure_and_the_stores_values(tmp_path):
    browser = chromium()  # before the search: a missing browser fails in a second
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = tsearch("search", str(SMOKE), "--set", f"tracking.uri={uri}",
                   "--set", f"search.storage_path={tmp_path}/ray",
                   "--set", f"eval.cache_dir={tmp_path}/cache", "--set", "search.algorithm=grid",
                   "--set", SPACE, "--set", "search.points_to_evaluate=[]",
                   "--set", "search.asha.enabled=false", "--set", "train.total_kimg=0.2",
                   "--set", "eval.every_kimg=0.1", "--set", f"search.name={SEARCH}",
                   # All four at once, one thread each (as in tests/test_report.py).
                   "--set", "search.max_concurrent=4", "--set", "search.cpus_per_trial=0.5",
                   "--set", "train.threads=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "report"
    proc = tsearch("report", SEARCH, "-o", str(out), "--tracking-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    artifacts = Path(os.environ.get("TSEARCH_TEST_ARTIFACTS") or tmp_path)
    shot = artifacts / "report_browser.png"
    shown = inspect_page(out / "report.html", screenshot=shot, width=WIDTH, executable=browser)
    page = shown["page"]
    assert page["title"] == f"tsearch report: {SEARCH}"
    assert page["viewport"] == WIDTH and page["width"] <= WIDTH  # nothing sticks out sideways

    # Every figure decoded, at its PNG's size, and is on screen.
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"fid_linear.png", "pt_linear_adaptive.png",
                                      "pt_final_linear.png"}
    images = shown["images"]
    assert len(images) == len(pngs)
    sizes = []
    for png in pngs:
        with Image.open(png) as image:
            sizes.append(image.size)
    assert sorted((i["naturalWidth"], i["naturalHeight"]) for i in images) == sorted(sizes)
    for img in images:
        assert img["complete"] and img["decoded"] and img["naturalWidth"] > 0, img["alt"]
        assert img["width"] > 100 and img["height"] > 100, (img["alt"], img)
        assert img["display"] != "none" and img["visibility"] == "visible" and img["shown"], img
        assert inside(img, page), (img["alt"], img, page)

    # Every table and every cell is on screen.
    tables = shown["tables"]
    assert len(tables) == 3  # the header, the FID table and the speed table of the one block
    for table in tables:
        assert table["shown"] and table["width"] > 0 and table["height"] > 0, table["heading"]
        assert inside(table, page), (table["heading"], table)
        for row in table["rows"]:
            assert all(c["shown"] and c["width"] > 0 and c["height"] > 0 for c in row), row

    # The header table: the search as the store has it.
    parent_id, fids = store(uri)
    meta = {row[0]: row[1] for row in texts(tables[0])}
    assert meta["search"] == SEARCH and meta["parent run"] == parent_id
    assert meta["tracking URI"] == uri and meta["trials"] == "4 (4 finished)"
    assert meta["baseline"] == "uniform"

    # The FID table: mean ± std over the two seeds at each evaluation, straight from the store.
    fid_table = next(t for t in tables if t["heading"] == "FID at each evaluation point")
    assert fid_table["section"] == "linear schedule"
    assert set(fids) == set(METHODS) and all(len(seeds) == 2 for seeds in fids.values())
    columns = len(fids["uniform"][0])
    assert columns == 2 and all(len(s) == columns for seeds in fids.values() for s in seeds)
    kimgs = [float(np.mean([s[j][0] for seeds in fids.values() for s in seeds])) / 1000
             for j in range(columns)]
    header, *rows = texts(fid_table)
    # Columns are labelled with the mean kimg rounded to 1 decimal (distinct here).
    assert header == ["method \\ kimg", "n"] + [f"{round(k, 1):g}" for k in kimgs]
    stats = {m: [(float(np.mean([s[j][1] for s in seeds])),
                  float(np.std([s[j][1] for s in seeds], ddof=1))) for j in range(columns)]
             for m, seeds in fids.items()}
    assert sorted(r[0] for r in rows) == sorted(METHODS)
    for row, cells in zip(rows, fid_table["rows"][1:], strict=True):
        method = row[0]
        assert row[1] == "2"
        assert row[2:] == [pm(mean, std) for mean, std in stats[method]]
        for j in range(columns):  # bold: the lowest mean of the column
            best = min(stats, key=lambda m: stats[m][j][0])
            assert cells[2 + j]["bold"] == (method == best), (method, j, row)

    def ratio(t, key):
        """A speed-up cell as report.json's ratio and range say it (docs/search.md, 2)."""
        from tsearch.report.curves import ratio_text

        span = t[f"{key}_range"]
        if t[key] is None:
            return f2(None)
        lo, hi = (None, None) if span is None else (span[0], math.inf if span[1] is None
                                                    else span[1])
        return ratio_text(t[key], lo, hi)

    # The speed table: the target is the baseline's mean final FID in the store; the rest as
    # report.json (checked against the store by tests/test_report.py) has it.
    speed = next(t for t in tables if t["heading"] == "Training and compute to the baseline's "
                                                      "final FID")
    target = float(np.mean([s[-1][1] for s in fids["uniform"]]))
    header, *rows = texts(speed)
    assert header[1] == f"kimg to FID {f2(target)}"
    cells = {c["label"]: c["to_target"] for c in
             json.loads((out / "report.json").read_text())["cells"]}
    assert sorted(r[0] for r in rows) == sorted(METHODS)
    for row in rows:
        t = cells[row[0]]
        assert math.isclose(t["target_fid"], target, rel_tol=1e-12)
        assert row[1:] == [f2(t["kimg_curve"]), ratio(t, "ratio_kimg"), si(t["compute_curve"]),
                           ratio(t, "ratio_compute"), f"{t['n_reached']} / {t['n']}",
                           pm(t["kimg_mean"], t["kimg_std"])]
    assert next(r for r in rows if r[0] == "uniform")[2] == "1.00"

    # The screenshot: the whole page at WIDTH px, with the figures drawn into it.
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width == WIDTH
        assert abs(image.height - page["height"]) <= 1, (image.size, page)
        rgb = image.convert("RGB")
    assert shot.stat().st_size > 30_000
    assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 256
    for img in images:  # each figure's area holds a drawing, not a blank page
        area = rgb.crop((round(img["x"]), round(img["y"]), round(img["x"] + img["width"]),
                         round(img["y"] + img["height"])))
        assert max(ImageStat.Stat(area).stddev) > 10, img["alt"]
