"""Search efficiency over repeated searches: is a search worth its compute?

For each algorithm (random at full budget, random + ASHA, TPE + ASHA, TPE + ASHA seeded with
every sampler's defaults) run R searches with different search seeds on the same space, each
given the same trial-kimg budget B. A search's quality at budget b is the *confirmed* mean final
FID (fresh training seeds, full budget) of the configuration it would recommend at b: its best
FID so far, over the evaluations it had made when its trials together had trained b kimg. A
search's own best FID is the wrong yardstick (the winner's curse), so every recommendation is
retrained; retrainings are cached by configuration, so a configuration recommended twice is
trained once.

Reports, per algorithm, the median and interquartile range over the R searches at 25/50/100% of
B, the trial-kimg its median curve needs to reach random search's median final quality, and the
anytime curves (PNG). Target: TPE + ASHA with defaults needs <= 0.35x random's compute, and its
median recommendation is at least as good as the best paper default (each sampler at its registry
defaults, confirmed on the same seeds).

Resumable and incremental: every finished search and every confirmed configuration is written
to ``--work`` at once; a rerun skips them. ``--repeats 5`` on the quickstart space is several
hours on 2 cores; ``--max-minutes`` stops cleanly between steps.

    python benchmarks/search_efficiency.py [--repeats 5] [--budget-trials 5] [--max-minutes 60]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.config import merge_flat  # noqa: E402
from tsearch.report.curves import kimg_to_target  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

ALGORITHMS: dict[str, list[str]] = {  # label -> overrides of the search config
    "random_full": ["search.algorithm=random", "search.asha.enabled=false",
                    "search.seed_with_defaults=false"],
    "random_asha": ["search.algorithm=random", "search.asha.enabled=true",
                    "search.seed_with_defaults=false"],
    "tpe_asha": ["search.algorithm=tpe", "search.asha.enabled=true",
                 "search.seed_with_defaults=false"],
    "tpe_asha_defaults": ["search.algorithm=tpe", "search.asha.enabled=true",
                          "search.seed_with_defaults=true"],
}
FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # anytime curve points of B
REPORTED = (0.25, 0.5, 1.0)


# --- Pure parts (tested in tests/test_search_efficiency.py) ------------------------------
def recommendation(events: Sequence[Sequence[Any]], budget: float) -> str | None:
    """The trial a search would recommend once its trials had trained ``budget`` kimg together.

    ``events`` are (timestamp, trial_id, kimg, fid) of every evaluation. Trial-kimg spent at an
    event is the sum over trials of the kimg each had reached; evaluations made after the
    budget ran out do not count. The recommendation is the best FID so far.
    """
    reached: dict[str, float] = {}
    best: tuple[float, str] | None = None
    for _, trial, kimg, fid in sorted(events, key=lambda e: e[0]):
        reached[trial] = max(reached.get(trial, 0.0), float(kimg))
        if sum(reached.values()) > budget + 1e-6:
            break
        if math.isfinite(fid) and (best is None or fid < best[0]):
            best = (float(fid), trial)
    return best[1] if best else None


def config_key(values: dict[str, Any]) -> str:
    """A searched configuration's identity (the cache key of its confirmation)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_to_reach(budgets: Sequence[float], medians: Sequence[float | None],
                     target: float) -> float | None:
    """First budget at which a median anytime curve is at or below ``target``: the report's
    interpolation rule (``kimg_to_target``) over the budgets that have a median."""
    points = [(b, m) for b, m in zip(budgets, medians, strict=True) if m is not None]
    if not points:
        return None
    return kimg_to_target([b for b, _ in points], [m for _, m in points], target)[0]


def quartiles(values: Sequence[float]) -> dict[str, float | None]:
    # A failed recommendation (inf) is the worst result, not a missing one.
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    big = np.finfo(np.float64).max / 4  # inf would turn interpolation into NaN
    q = np.percentile(np.minimum(x, big), [25, 50, 75])
    q25, med, q75 = (math.inf if v >= big / 2 else float(v) for v in q)
    return {"median": med, "q25": q25, "q75": q75, "n": int(x.size)}


# --- Running --------------------------------------------------------------------------------------
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def run_one_search(config: str, algo: str, seed: int, num_samples: int, work: Path,
                   overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """One search in a throw-away store (``work`` is the scratch directory); its evaluations.
    ``overrides`` (default: the algorithm's row of ``ALGORITHMS``) set the search's variant."""
    from tsearch.search.tuner import run_search

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cfg = load_config(config, [
            *(ALGORITHMS[algo] if overrides is None else overrides), f"search.seed={seed}",
            f"search.num_samples={num_samples}",
            "search.confirm.enabled=false", f"search.name=eff-{algo}-{seed}",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"search.storage_path={tmp}/ray",
            f"tracking.artifact_root={tmp}/artifacts", f"eval.cache_dir={work}/cache"])
        result = run_search(cfg, Path(config))
    events = [(ts, t.trial_id, k, f) for t in result.trials
              for ts, (k, f) in zip(t.fid_times, t.fid_by_kimg, strict=True)]
    return {"algorithm": algo, "seed": seed, "num_samples": num_samples,
            "seconds": result.seconds, "events": events,
            "trials": {t.trial_id: dict(t.values) for t in result.trials},
            "trial_kimg": sum(t.kimg for t in result.trials)}


def _confirm_run(args: tuple[str, dict[str, Any], int, str]) -> tuple[int, float | None]:
    """One confirmation training (its own process, one thread): final FID on ``seed``."""
    config, values, seed, work = args
    from tsearch.log import quiet
    from tsearch.timesteps import validate_config
    from tsearch.train import train

    base = load_config(config).to_dict()
    base["search"] = {}
    total = base["train"]["total_kimg"]
    raw = merge_flat(base, {**values, "train.seed": seed, "train.threads": 1,
                            "train.progress": False, "tracking.backend": "none",
                            "eval.at_kimg": [total], "eval.cache_dir": f"{work}/cache",
                            "train.out_dir": f"{work}/runs"})
    try:
        with quiet():
            result = train(validate_config(raw))
    except Exception as exc:  # a diverged or failed run is a result (no FID), not a crash
        print(f"  seed {seed}: run failed ({str(exc).splitlines()[0][:200]})", flush=True)
        return seed, None
    shutil.rmtree(result.run_dir, ignore_errors=True)  # only its FID is kept
    return seed, result.final_fid


def confirm_configs(config: str, todo: dict[str, dict[str, Any]], seeds: Sequence[int],
                    work: Path, cache: dict[str, Any], cache_path: Path, deadline: float,
                    workers: int) -> None:
    """Retrain every configuration in ``todo`` on ``seeds``; results into ``cache`` as they come."""
    jobs = [(key, values, seed) for key, values in todo.items()
            for seed in seeds if str(seed) not in cache.get(key, {}).get("finals", {})]
    if not jobs:
        return
    print(f"confirming {len(todo)} configurations: {len(jobs)} runs", flush=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {}
        for key, values, seed in jobs:
            futures[pool.submit(_confirm_run, (config, values, seed, str(work)))] = key
        stopping = False
        for i, (future, key) in enumerate(futures.items(), 1):
            if future.cancelled():
                continue
            seed, fid = future.result()
            entry = cache.setdefault(key, {"values": todo[key], "finals": {}})
            entry["finals"][str(seed)] = fid
            _save(cache_path, cache)
            shown = "failed" if fid is None else f"{fid:.2f}"
            print(f"  [{i}/{len(jobs)}] {key} seed {seed}: FID {shown}", flush=True)
            if time.monotonic() > deadline and not stopping:
                stopping = True  # the runs in flight still finish and are recorded
                for f in futures:
                    f.cancel()
                print("time limit: stopping after the runs in flight", flush=True)


def searched_values(trial_config: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in trial_config.items() if k not in labels and k != "train.seed"}


def default_configs(config: str) -> dict[str, dict[str, Any]]:
    """Every sampler of the space at its registry defaults (the paper defaults)."""
    from tsearch.search.defaults import default_points
    from tsearch.search.plan import base_config
    from tsearch.search.space import SearchSpace

    cfg = load_config(config)
    space = SearchSpace.from_config(cfg)
    points = default_points(space, base_config(cfg, cfg.tracking.uri))
    return {p["timesteps.sampler.name"]: p for p in points}


def summarise(searches: dict[str, Any], cache: dict[str, Any], defaults: dict[str, Any],
              budget: float, seeds: Sequence[int]) -> dict[str, Any]:
    """Median/IQR tables, compute to random's median final quality, best default."""
    def mean_of(key: str) -> float | None:
        """Mean final FID over the seeds; inf if a run failed; None while some are missing."""
        recorded = cache.get(key, {}).get("finals", {})
        if any(str(s) not in recorded for s in seeds):
            return None
        finals = [recorded[str(s)] for s in seeds]
        return math.inf if None in finals else float(np.mean(finals))

    budgets = [f * budget for f in FRACTIONS]
    per_algo: dict[str, Any] = {}
    for algo in ALGORITHMS:
        runs = [s for s in searches.values() if s["algorithm"] == algo]
        curves = []
        for run in runs:
            keys = []
            for b in budgets:
                trial = recommendation(run["events"], b)
                keys.append(None if trial is None else
                            config_key(searched_values(run["trials"][trial], [])))
            curves.append([None if k is None else mean_of(k) for k in keys])
        medians = [quartiles([c[i] for c in curves if c[i] is not None])["median"]
                   for i in range(len(budgets))]
        per_algo[algo] = {
            "searches": len(runs),
            "curves": curves,
            "median_curve": medians,
            "at": {f"{int(f * 100)}%": quartiles([c[FRACTIONS.index(f)] for c in curves
                                                  if c[FRACTIONS.index(f)] is not None])
                   for f in REPORTED},
            "trial_kimg_total": quartiles([r["trial_kimg"] for r in runs]),
            "seconds": quartiles([r["seconds"] for r in runs]),
        }
    random_final = per_algo["random_full"]["median_curve"][-1]
    for row in per_algo.values():
        row["trial_kimg_to_random_median_final"] = (
            None if random_final is None else
            compute_to_reach(budgets, row["median_curve"], random_final))
    base = per_algo["random_full"]["trial_kimg_to_random_median_final"]
    for row in per_algo.values():
        need = row["trial_kimg_to_random_median_final"]
        row["compute_vs_random"] = None if need is None or not base else need / base
    paper = {name: mean_of(config_key(values)) for name, values in defaults.items()}
    known = {k: v for k, v in paper.items() if v is not None}
    best_default = min(known.items(), key=lambda kv: kv[1]) if known else None
    return {"budgets": budgets, "algorithms": per_algo, "paper_defaults": paper,
            "best_default": best_default}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.asarray(summary["budgets"])
    for algo, row in summary["algorithms"].items():
        curves = np.array([[np.nan if v is None else v for v in c] for c in row["curves"]],
                          dtype=np.float64)
        if not curves.size:
            continue
        with warnings.catch_warnings():  # a budget with no recommendation yet: a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(curves, axis=0)
            lo, hi = np.nanpercentile(curves, 25, axis=0), np.nanpercentile(curves, 75, axis=0)
        ax.plot(x, med, marker="o", label=f"{algo} (n={len(curves)})")
        ax.fill_between(x, lo, hi, alpha=0.15)
    if summary["best_default"]:
        name, fid = summary["best_default"]
        ax.axhline(fid, color="gray", linestyle="--", label=f"best default ({name})")
    ax.set_xlabel("trial-kimg spent by the search")
    ax.set_ylabel("confirmed FID of its recommendation")
    ax.set_title("search efficiency: median and IQR over searches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--repeats", type=int, default=5, help="searches per algorithm (R)")
    ap.add_argument("--budget-trials", type=float, default=5.0,
                    help="budget B in full-length trials (B = this x train.total_kimg)")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--confirm-seeds", default="101,102,103")
    ap.add_argument("--workers", type=int, default=2, help="confirmation runs at once")
    ap.add_argument("--max-minutes", type=float, default=math.inf)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "search_efficiency"),
                    help="where the finished searches and confirmations are kept (JSON)")
    ap.add_argument("--scratch", default=str(ROOT / "tsearch-runs" / "search_efficiency"),
                    help="stores, checkpoints and FID caches of the runs (not kept)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "search_efficiency.json"))
    args = ap.parse_args()
    deadline = time.monotonic() + 60 * args.max_minutes
    work, scratch = Path(args.work), Path(args.scratch)
    work.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.confirm_seeds.split(",")]
    total = load_config(args.config).train.total_kimg
    budget = args.budget_trials * total
    searches_path, cache_path = work / "searches.json", work / "confirmed.json"
    searches, cache = _load(searches_path), _load(cache_path)
    defaults = default_configs(args.config)
    # The paper defaults first: the yardstick every search is held to.
    confirm_configs(args.config, {config_key(v): v for v in defaults.values()}, seeds, scratch,
                    cache, cache_path, deadline, args.workers)
    for seed in range(1, args.repeats + 1):
        for algo in args.algorithms.split(","):
            name = f"{algo}-{seed}"
            if name in searches or time.monotonic() > deadline:
                continue
            full = algo == "random_full"
            # ASHA stops most trials at the first rung: more trials fit in the same budget.
            n = int(args.budget_trials) if full else int(math.ceil(args.budget_trials * 3))
            print(f"search {name}: {n} trials, budget {budget:g} trial-kimg", flush=True)
            searches[name] = run_one_search(args.config, algo, seed, n, scratch)
            _save(searches_path, searches)
            todo = {}
            for b in (f * budget for f in FRACTIONS):
                trial = recommendation(searches[name]["events"], b)
                if trial is not None:
                    values = searched_values(searches[name]["trials"][trial], [])
                    todo[config_key(values)] = values
            confirm_configs(args.config, todo, seeds, scratch, cache, cache_path, deadline,
                            args.workers)
    summary = summarise(searches, cache, defaults, budget, seeds)
    plot(summary, Path(args.out).with_suffix(".png"))
    result = {"benchmark": "search_efficiency", "config": Path(args.config).name,
              "budget_trial_kimg": budget, "confirm_seeds": seeds,
              "repeats_requested": args.repeats, **summary,
              "target": {"compute_vs_random": 0.35,
                         "tpe_asha_defaults_median_final_vs_best_default": "<="},
              "command": "python benchmarks/search_efficiency.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    for algo, row in summary["algorithms"].items():
        at = row["at"]
        print(f"{algo:<18} n={row['searches']}  " + "  ".join(
            f"{k}: {v['median'] if v['median'] is None else round(v['median'], 2)}"
            for k, v in at.items())
            + f"  compute vs random: {row['compute_vs_random']}", flush=True)
    print(f"best default: {summary['best_default']} -> {args.out}")


if __name__ == "__main__":
    main()
