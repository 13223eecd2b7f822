"""The surrogate study checked against real searches.

``benchmarks/search_study.py`` ranks search variants over hundreds of searches replayed on a
surrogate. Whether that ranking holds for real training is checked here: for random search and
the variants the study ranks best, R real searches (``tsearch``'s own ``run_search``, search
seeds 1..R as in the study), each given B trial-kimg. A search's recommendation at B follows the
variant's rule (the model's mean or the best observed FID, over the evaluations made within B:
``search_study.recommend`` on ``search_study.prefix``), and is confirmed by real retraining on
seeds 101-103 (cached by configuration). The real medians are set beside the study's
interquartile ranges at B, with the best default confirmed on the same seeds.

Resumable: finished searches and confirmations are written to ``--work`` at once.

    python benchmarks/search_check.py --variants random_full,A,B [--repeats 5] [--budget 200]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search_efficiency import (  # noqa: E402
    _load,
    _save,
    config_key,
    confirm_configs,
    default_configs,
    quartiles,
    run_one_search,
)
from benchmarks.search_study import CONFIRM_SEEDS, VARIANTS, prefix, recommend  # noqa: E402
from tsearch.search.space import SearchSpace  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402


def num_trials(cfg: Any, budget: float) -> int:
    """Trials enough that the budget, not the trial count, ends the search (as in the study)."""
    full = not cfg.search.asha.enabled
    n = int(math.ceil(budget / cfg.train.total_kimg * (1 if full else 3)))
    return max(n, 12) if cfg.search.seed_with_defaults else n


def inside(median: float | None, band: dict[str, Any] | None) -> bool | None:
    """Whether a real median falls inside the study's interquartile range (None: no band)."""
    if median is None or not band or band.get("q25") is None:
        return None
    return bool(band["q25"] <= median <= band["q75"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--variants", required=True, help="comma-separated names of search_study")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=200.0, help="trial-kimg per search")
    ap.add_argument("--workers", type=int, default=2, help="confirmation runs at once")
    ap.add_argument("--max-minutes", type=float, default=math.inf)
    ap.add_argument("--study", default=str(ROOT / "benchmarks" / "results" /
                                           "search_study.json"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "search_check"))
    ap.add_argument("--scratch", default=str(ROOT / "tsearch-runs" / "search_check"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "search_check.json"))
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(VARIANTS)}")
    deadline = time.monotonic() + 60 * args.max_minutes
    work, scratch = Path(args.work), Path(args.scratch)
    work.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    searches_path, cache_path = work / "searches.json", work / "confirmed.json"
    searches, cache = _load(searches_path), _load(cache_path)
    base = load_config(args.config)
    space = SearchSpace.from_config(base)
    total = base.train.total_kimg
    defaults = default_configs(args.config)
    confirm_configs(args.config, {config_key(v): v for v in defaults.values()}, CONFIRM_SEEDS,
                    scratch, cache, cache_path, deadline, args.workers)
    for seed in range(1, args.repeats + 1):
        for name in names:
            key = f"{name}-{seed}"
            if key in searches or time.monotonic() > deadline:
                continue
            cfg = load_config(args.config, VARIANTS[name])
            n = num_trials(cfg, args.budget)
            print(f"search {key}: {n} trials, budget {args.budget:g} trial-kimg", flush=True)
            run = run_one_search(args.config, name, seed, n, scratch, overrides=VARIANTS[name])
            pick = recommend(prefix(run["events"], args.budget), run["trials"], space, total,
                             cfg.search.recommend == "model")
            run["variant"], run["recommended"] = name, pick
            searches[key] = run
            _save(searches_path, searches)
            if pick is not None:
                confirm_configs(args.config, {config_key(pick): pick}, CONFIRM_SEEDS, scratch,
                                cache, cache_path, deadline, args.workers)
    out = summarise(searches, cache, defaults, names, args)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    for name, row in out["variants"].items():
        q, band = row["confirmed"], row["study_at_budget"]
        shown = "n/a" if q["median"] is None else f"{q['median']:.2f}"
        study = "n/a" if not band or band.get("q25") is None else \
            f"{band['q25']:.2f}-{band['q75']:.2f}"
        print(f"{name:<32} n={q['n']}  real median {shown}  study IQR {study}  "
              f"inside: {row['inside_study_iqr']}")
    print(f"best default: {out['best_default']} -> {args.out}")


def summarise(searches: dict[str, Any], cache: dict[str, Any], defaults: dict[str, Any],
              names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    def mean_of(values: dict[str, Any] | None) -> float | None:
        finals = cache.get(config_key(values), {}).get("finals", {}) if values else {}
        if values is None or any(str(s) not in finals for s in CONFIRM_SEEDS):
            return None
        got = [finals[str(s)] for s in CONFIRM_SEEDS]
        return math.inf if None in got else sum(got) / len(got)

    study = _load(Path(args.study)).get("variants", {})
    rows = {}
    for name in names:
        runs = [r for r in searches.values() if r.get("variant") == name]
        q = quartiles([mean_of(r["recommended"]) for r in runs])
        band = study.get(name, {}).get("at", {}).get(f"{args.budget:g}")
        rows[name] = {"searches": len(runs), "confirmed": q, "study_at_budget": band,
                      "inside_study_iqr": inside(q["median"], band),
                      "trial_kimg": quartiles([r["trial_kimg"] for r in runs]),
                      "seconds": quartiles([r["seconds"] for r in runs])}
    paper = {n: mean_of(v) for n, v in defaults.items()}
    known = {k: v for k, v in paper.items() if v is not None}
    return {"benchmark": "search_check", "budget_trial_kimg": args.budget,
            "confirm_seeds": CONFIRM_SEEDS, "variants": rows, "paper_defaults": paper,
            "best_default": min(known.items(), key=lambda kv: kv[1]) if known else None,
            "command": "python benchmarks/search_check.py " + " ".join(sys.argv[1:])}


if __name__ == "__main__":
    main()
