"""benchmarks/eval_fidelity.py: rank agreement, the choice of the cheapest setting, the summary;
and one tiny real run of the benchmark (real training, real FID)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "eval_fidelity.py"
_spec = importlib.util.spec_from_file_location("eval_fidelity", SCRIPT)
ef = importlib.util.module_from_spec(_spec)
sys.modules["eval_fidelity"] = ef  # dataclasses look their module up while it loads
_spec.loader.exec_module(ef)


# --- Spearman ---------------------------------------------------------------------------------
def test_average_ranks_share_ties():
    assert ef.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert ef.average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]
    assert ef.average_ranks([2.0, -1.0]).tolist() == [2, 1]


def test_spearman_hand_computed_with_ties():
    # ranks of b: 1, 2, 3.5, 5, 3.5; centred products sum to 8, squares to 10 and 9.5.
    assert ef.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert ef.spearman([1, 2, 3], [10, 100, 1000]) == pytest.approx(1.0)  # ranks, not values
    assert ef.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=17).astype(float)  # many ties on both sides
    b = a + rng.integers(-2, 3, size=17)
    assert ef.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    c = rng.normal(size=30)
    d = c + rng.normal(size=30)
    assert ef.spearman(c, d) == pytest.approx(stats.spearmanr(c, d).statistic, abs=1e-12)


def test_spearman_leaves_out_non_finite_pairs_and_has_no_ranking_when_constant():
    a, b = [1.0, 2.0, math.nan, 4.0, 5.0], [2.0, 1.0, 3.0, math.inf, 6.0]
    assert ef.spearman(a, b) == pytest.approx(ef.spearman([1, 2, 5], [2, 1, 6]))
    assert math.isnan(ef.spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(ef.spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match="paired"):
        ef.spearman([1, 2], [1, 2, 3])


def test_spearman_within_groups_skips_small_groups():
    a = [1, 2, 3, 10, 20, 30, 7, 8]
    b = [1, 2, 3, 30, 20, 10, 8, 7]  # group x agrees, group y is reversed, z has 2 models
    groups = ["x", "x", "x", "y", "y", "y", "z", "z"]
    assert ef.spearman_within(a, b, groups) == pytest.approx(0.0)
    assert ef.spearman_within(a[:3], b[:3], groups[:3]) == pytest.approx(1.0)
    assert ef.spearman_within(a[6:], b[6:], groups[6:]) is None


# --- The choice --------------------------------------------------------------------------------
def row(name, kind, rho, seconds, forwards=1000):
    return {"name": name, "kind": kind, "rho": rho, "median_seconds": seconds,
            "forwards": forwards}


ROWS = [
    row("fid-200x5", "fid", 0.80, 1.0, 1000),       # cheapest, but ranks badly
    row("fid-300x10", "fid", 0.96, 3.0, 3000),
    row("fid-200x20", "fid", 0.97, 3.0, 4000),      # same seconds, more forwards
    row("fid-500x20", "fid", 0.99, 9.0, 10000),
    row("fid-100x1", "fid", None, 0.1, 100),        # no ranking: never qualifies
    row("fid-150x1", "fid", math.nan, 0.1, 150),
    row("proxy-mse-256", "proxy", 0.95, 0.2, 256),  # exactly at the threshold
    row("proxy-mse-64", "proxy", 0.90, 0.05, 64),
]


def test_cheapest_at_picks_the_lowest_cost_qualifying_fid_setting():
    assert ef.cheapest_at(ROWS)["name"] == "fid-300x10"  # seconds tie: fewer forwards
    assert ef.cheapest_at(ROWS, 0.98)["name"] == "fid-500x20"
    assert ef.cheapest_at(ROWS, 0.5)["name"] == "fid-200x5"


def test_rungs_may_take_a_proxy_that_qualifies():
    assert ef.cheapest_at(ROWS, 0.95, ("fid", "proxy"))["name"] == "proxy-mse-256"
    assert ef.cheapest_at(ROWS, 0.96, ("fid", "proxy"))["name"] == "fid-300x10"


def test_cheapest_at_also_needs_the_ranking_within_each_kimg():
    rows = [{**r, "rho_within_kimg": 0.9} if r["name"] == "fid-300x10" else r for r in ROWS]
    assert ef.cheapest_at(rows)["name"] == "fid-200x20"  # 300x10 shuffles same-kimg models
    rows = [{**r, "rho_within_kimg": None} for r in ROWS]  # no group big enough: rho decides
    assert ef.cheapest_at(rows)["name"] == "fid-300x10"


def test_cheapest_at_is_none_when_nothing_qualifies():
    assert ef.cheapest_at(ROWS, 0.995) is None
    assert ef.cheapest_at([]) is None
    assert ef.cheapest_at([row("fid-a", "fid", 0.99, None)]) is None  # cost unknown


# --- Settings and summary -------------------------------------------------------------------
def test_parse_settings_adds_the_baseline_once_and_orders_by_cost():
    grid = ef.parse_settings("200,500", "5,20", (500, 20))
    assert [s.name for s in grid] == ["fid-200x5", "fid-500x5", "fid-200x20", "fid-500x20"]
    grid = ef.parse_settings("200", "5", (500, 20))
    assert [s.name for s in grid] == ["fid-200x5", "fid-500x20"]
    assert ef.Setting("fid", 2000, 50, reference=True).name == "ref-fid-2000x50"
    assert ef.Setting("proxy", size=256).forwards == 256


def synthetic(noise_scale: float, seed: int = 0):
    """Models at 3 kimg x 3 runs; FID falls with kimg; settings with known agreement."""
    rng = np.random.default_rng(seed)
    models = [{"id": f"{r}@{k}", "run": r, "kimg": k} for k in (1, 4, 20)
              for r in ("uniform", "lognormal", "speed")]
    ref = ef.Setting("fid", 2000, 50, reference=True)
    exact, noisy, base = (ef.Setting("fid", 200, 5), ef.Setting("fid", 300, 10),
                          ef.Setting("fid", 500, 20))
    proxy = ef.Setting("proxy", size=256)
    evals = {}
    for i, m in enumerate(models):
        fid = 100.0 / m["kimg"] + i  # distinct values
        evals[m["id"]] = {
            ref.name: {"value": fid, "seconds": 20.0},
            exact.name: {"value": fid + 2.0, "seconds": 1.0 + 0.01 * i},  # same ranking
            noisy.name: {"value": float(rng.normal(50, noise_scale)), "seconds": 3.0},
            base.name: {"value": fid - 1.0, "seconds": 10.0},
            proxy.name: {"value": -fid, "seconds": 0.1},  # ranks the models backwards
        }
    # A model whose reference failed (NaN) and one never evaluated do not count.
    models.append({"id": "diverged@1", "run": "diverged", "kimg": 1})
    evals["diverged@1"] = {ref.name: {"value": math.nan, "seconds": 20.0},
                           exact.name: {"value": math.nan, "seconds": 1.0}}
    models.append({"id": "pending@1", "run": "pending", "kimg": 1})
    return models, evals, ref, [exact, noisy, base, proxy], base


def test_summary_shape_and_numbers():
    models, evals, ref, settings, base = synthetic(noise_scale=30.0)
    out = ef.summarise(models, evals, ref, settings, base)
    json.dumps(out, allow_nan=False)  # strict JSON: failed values are null, not NaN
    assert set(out) >= {"reference", "baseline", "models", "n_models_scored", "settings", "choice"}
    assert out["n_models_scored"] == 9
    assert out["reference"]["name"] == "ref-fid-2000x50"
    assert out["reference"]["cost_vs_baseline"] == pytest.approx(2.0)
    by = {r["name"]: r for r in out["settings"]}
    assert list(by) == [s.name for s in settings]
    for r in out["settings"]:
        assert r["n_models"] == 9 and len(r["values"]) == 9
        assert -1.0 <= r["rho"] <= 1.0
    assert by["fid-200x5"]["rho"] == pytest.approx(1.0)
    assert by["fid-200x5"]["rho_within_kimg"] == pytest.approx(1.0)
    assert by["fid-200x5"]["fid_abs_error_mean"] == pytest.approx(2.0)
    assert by["fid-200x5"]["fid_abs_error_max"] == pytest.approx(2.0)
    assert by["proxy-mse-256"]["rho"] == pytest.approx(-1.0)
    assert by["proxy-mse-256"]["fid_abs_error_mean"] is None  # a loss is not an FID
    assert by["fid-500x20"]["cost_vs_baseline"] == pytest.approx(1.0)
    assert by["fid-200x5"]["median_seconds"] == pytest.approx(1.04)
    assert by["fid-200x5"]["cost_vs_baseline"] == pytest.approx(0.104)
    ref_fids = {m["id"]: m["reference_fid"] for m in out["models"]}
    assert ref_fids["diverged@1"] is None and ref_fids["pending@1"] is None
    assert out["choice"]["final"] == "fid-200x5"
    assert out["choice"]["rungs"] == "fid-200x5"  # the proxy ranks backwards
    assert out["choice"]["proxy_qualifies"] is False
    assert ef.table(out).count("<- final, rungs") == 1


def test_summary_choice_is_null_when_no_cheap_setting_ranks_well():
    models, evals, ref, settings, base = synthetic(noise_scale=30.0)
    for m in evals.values():  # every cheap FID ranks the models backwards
        for s in settings:
            if s.kind == "fid" and s.name in m:
                m[s.name]["value"] = -m[ref.name]["value"]
    out = ef.summarise(models, evals, ref, settings, base)
    assert out["choice"]["final"] is None and out["choice"]["rungs"] is None
    assert "keep ref-fid-2000x50" in ef.table(out)


def test_summary_without_any_reference_has_no_rho():
    models, evals, ref, settings, base = synthetic(noise_scale=1.0)
    for m in evals.values():
        m.pop(ref.name)
    out = ef.summarise(models, evals, ref, settings, base)
    assert out["n_models_scored"] == 0
    assert all(r["rho"] is None and r["n_models"] == 0 for r in out["settings"])
    assert out["choice"]["final"] is None
    json.dumps(out, allow_nan=False)


# --- The benchmark, end to end ----------------------------------------------------------------
@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    work, out = tmp_path / "work", tmp_path / "ef.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--work", str(work), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(result["models"]) >= 4 and result["n_models_scored"] == len(result["models"])
    assert all(math.isfinite(m["reference_fid"]) for m in result["models"])
    assert len({m["run"] for m in result["models"]}) >= 2
    names = [r["name"] for r in result["settings"]]
    assert result["baseline"] in names and any(n.startswith("proxy-") for n in names)
    for r in result["settings"]:
        assert r["n_models"] == len(result["models"])
        assert r["rho"] is not None and -1.0 <= r["rho"] <= 1.0
        assert r["median_seconds"] > 0
        assert all(math.isfinite(v) for v in r["values"].values())
    choice = result["choice"]
    assert choice["final"] is None or choice["final"] in names
    assert choice["rungs"] is None or choice["rungs"] in names
    assert len({m["reference_fid"] for m in result["models"]}) == len(result["models"])
    by = {r["name"]: r for r in result["settings"]}
    assert by[result["baseline"]]["cost_vs_baseline"] == pytest.approx(1.0)
    for r in result["settings"]:  # network evaluations: the machine-independent cost
        if r["kind"] == "fid":
            assert r["forwards"] == r["num_images"] * r["steps"], r["name"]
    assert first.stderr.count("reference FID") == len(result["models"])
    assert "rho" in first.stdout and result["baseline"] in first.stdout

    # A rerun trains and evaluates nothing and reports the same numbers.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained" not in again.stderr and "reference FID" not in again.stderr
    assert json.loads(out.read_text())["settings"] == result["settings"]
