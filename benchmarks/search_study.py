"""Search algorithms compared over many replayed searches on the surrogate.

For each algorithm variant, R searches (search seeds 1..R) are replayed against the surrogate of
``benchmarks/search_surrogate.py`` with ``benchmarks/replay.py`` (the real Tuner, searcher and
ASHA), each given the largest budget. A search's quality at budget b is the *confirmed* FID of
what it would recommend once its trials had trained b kimg together: the surrogate's final FID
averaged over the confirmation seeds 101-103 (the same seeds for every search, as a real
confirmation would retrain). Recommendation is by the model's mean (``search.recommend: model``)
or the best observed FID, as the variant says.

Reports per variant the median and interquartile range of that quality at each budget, the
trial-kimg its median curve needs to reach random search's median final quality, and the best
default's confirmed FID on the same seeds.

    python benchmarks/search_study.py [--repeats 100] [--budgets 50,100,200,400]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.replay import replay_search  # noqa: E402
from benchmarks.search_efficiency import compute_to_reach, default_configs, quartiles  # noqa: E402
from benchmarks.search_surrogate import Surrogate, _points, load_table  # noqa: E402
from tsearch.labels import SEED_KEY  # noqa: E402
from tsearch.records import TrialRecord  # noqa: E402
from tsearch.search.space import SearchSpace  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

VARIANTS: dict[str, list[str]] = {  # label -> overrides of the quickstart's search config
    "random_full": ["search.algorithm=random", "search.asha.enabled=false",
                    "search.seed_with_defaults=false", "search.recommend=best"],
    "random_asha": ["search.algorithm=random", "search.seed_with_defaults=false",
                    "search.recommend=best"],
    "tpe_asha": ["search.algorithm=tpe", "search.seed_with_defaults=false",
                 "search.recommend=best"],
    "tpe_asha_defaults": ["search.algorithm=tpe", "search.recommend=best"],
    "tpe_asha_defaults_model": ["search.algorithm=tpe", "search.recommend=model"],
    "tpe_asha_defaults_repeat_model": ["search.algorithm=tpe", "search.recommend=model",
                                       "search.repeat_top=[1, 2]"],
    "gp_asha_defaults_model": ["search.algorithm=gp", "search.recommend=model"],
}
CONFIRM_SEEDS = (101, 102, 103)


def prefix(events: Sequence[tuple[float, str, float, float]], budget: float
           ) -> list[tuple[float, str, float, float]]:
    """The evaluations made before the search's trials had trained ``budget`` kimg together."""
    reached: dict[str, float] = {}
    out = []
    for ev in sorted(events):
        _, trial, kimg, _ = ev
        reached[trial] = max(reached.get(trial, 0.0), kimg)
        if sum(reached.values()) > budget + 1e-6:
            break
        out.append(ev)
    return out


def recommend(events: Sequence[tuple[float, str, float, float]],
              trials: dict[str, dict[str, Any]], space: SearchSpace, total: float,
              by_model: bool) -> dict[str, Any] | None:
    """The searched values a search recommends from these evaluations."""
    from tsearch.search import recommend as rec

    fids: dict[str, list[tuple[int, float]]] = {}
    for _, trial, kimg, fid in events:
        fids.setdefault(trial, []).append((int(round(kimg * 1000)), fid))
    records = [TrialRecord(trial_id=t, values=trials[t], fid=f) for t, f in fids.items()]
    if not records:
        return None
    if by_model:
        preds = rec.predict(records, space, total)
        if preds:
            return {k: v for k, v in preds[0].trial.values.items() if k != SEED_KEY}
    best = min(records, key=lambda r: r.best_fid)
    return {k: v for k, v in best.values.items() if k != SEED_KEY}


def confirmed(surrogate: Surrogate, values: dict[str, Any]) -> float:
    """Mean final FID over the confirmation seeds: what the real stage would measure."""
    return float(np.mean([surrogate.curve(values, s)[-1][1] for s in CONFIRM_SEEDS]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--table", default=str(ROOT / "benchmarks" / "results" /
                                           "search_table.json"))
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--budgets", default="50,100,200,400")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--min-seeds", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "search_study"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_study.json"))
    ap.add_argument("--max-minutes", type=float, default=math.inf)
    args = ap.parse_args()
    from tsearch.log import quiet
    from tsearch.search.ray_runtime import end_session, init_ray

    deadline = time.monotonic() + 60 * args.max_minutes
    budgets = [float(b) for b in args.budgets.split(",")]
    base = load_config(args.config)
    space = SearchSpace.from_config(base)
    rows = load_table(Path(args.table), args.min_seeds)
    surrogate = Surrogate(space, _points(rows)).fit(rows)
    total = base.train.total_kimg
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    done_path = work / "searches.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    session = init_ray(None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(1, args.repeats + 1):
                for name in args.variants.split(","):
                    key = f"{name}-{r}"
                    if key in done or time.monotonic() > deadline:
                        continue
                    cfg = load_config(args.config, VARIANTS[name])
                    full = not cfg.search.asha.enabled
                    n = int(math.ceil(budgets[-1] / total * (1 if full else 3)))
                    n = max(n, 12) if cfg.search.seed_with_defaults else n
                    start = time.perf_counter()
                    with quiet():
                        events, trials = replay_search(cfg, surrogate, seed=r, num_samples=n,
                                                       storage=tmp)
                    by_model = cfg.search.recommend == "model"
                    quality = {}
                    for b in budgets:
                        pick = recommend(prefix(events, b), trials, space, total, by_model)
                        quality[f"{b:g}"] = None if pick is None else confirmed(surrogate, pick)
                    done[key] = {"variant": name, "repeat": r, "quality": quality,
                                 "seconds": time.perf_counter() - start}
                    done_path.write_text(json.dumps(done) + "\n")
                    print(f"{key}: " + "  ".join(f"{b}: {q if q is None else round(q, 2)}"
                                                 for b, q in quality.items()), flush=True)
    finally:
        if session is not None:
            end_session(session)
    summary: dict[str, Any] = {}
    for name in args.variants.split(","):
        runs = [v for v in done.values() if v["variant"] == name]
        at = {b: quartiles([v["quality"][b] for v in runs if v["quality"].get(b) is not None])
              for b in (f"{x:g}" for x in budgets)}
        summary[name] = {"searches": len(runs), "at": at,
                         "median_curve": [at[f"{x:g}"]["median"] for x in budgets]}
    target = summary.get("random_full", {}).get("median_curve", [None])[-1]
    for row in summary.values():
        need = None if target is None else compute_to_reach(budgets, row["median_curve"], target)
        row["trial_kimg_to_random_median_final"] = need
    defaults = {n: confirmed(surrogate, v) for n, v in default_configs(args.config).items()}
    best = min(defaults.items(), key=lambda kv: kv[1])
    out = {"benchmark": "search_study", "budgets": budgets, "confirm_seeds": CONFIRM_SEEDS,
           "variants": summary, "defaults": defaults, "best_default": best,
           "command": "python benchmarks/search_study.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    for name, row in summary.items():
        print(f"{name:<32} n={row['searches']:<4} " + "  ".join(
            f"{b}: {v['median'] if v['median'] is None else round(v['median'], 2)}"
            for b, v in row["at"].items())
            + f"  to random's final: {row['trial_kimg_to_random_median_final']}")
    print(f"best default {best[0]} {best[1]:.2f} -> {args.out}")


if __name__ == "__main__":
    main()
