"""Search efficiency: compute for ASHA + TPE to get within 5% of the best FID, vs random search.

Runs the quickstart space twice with about the same compute: full-budget random search (no early
stopping, `--trials` trials) and ASHA + TPE with `--asha-trials` trials, which early stopping
makes fit in a similar number of trial-kimg. The best FID is the lowest any trial of either
search reached; a search's cost is the total trial-kimg trained, across all its trials in
wall-clock order, until some trial first evaluated within 5% of it.

    python benchmarks/search_efficiency.py [--trials 10] [--asha-trials 24]

Writes benchmarks/results/search_efficiency.json. Target: ratio <= 0.35.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.config import load_config  # noqa: E402
from tsearch.search.tuner import SearchResult, run_search  # noqa: E402


def compute_to_reach(result: SearchResult, target: float) -> tuple[float, float]:
    """(trial-kimg spent when a trial first reached FID <= target, total trial-kimg)."""
    events = sorted((ts, t.trial_id, kimg, fid)
                    for t in result.trials for ts, (kimg, fid) in zip(t.times, t.fids,
                                                                       strict=True))
    progress: dict[str, float] = {}
    reached = math.inf
    for _, trial, kimg, fid in events:
        progress[trial] = kimg
        if fid <= target and math.isinf(reached):
            reached = sum(progress.values())
    total = sum(t.kimg for t in result.trials)
    return reached, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--asha-trials", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "search_efficiency.json"))
    args = ap.parse_args()
    results: dict[str, SearchResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"search.storage_path={tmp}/ray",
                  f"tracking.artifact_root={tmp}/artifacts"]
        for label, extra in (("asha_tpe", ["search.algorithm=tpe", "search.asha.enabled=true",
                                           f"search.num_samples={args.asha_trials}"]),
                             ("random_full", ["search.algorithm=random",
                                              "search.asha.enabled=false",
                                              f"search.num_samples={args.trials}"])):
            cfg = load_config(args.config, [*common, *extra, f"search.name={label}"])
            results[label] = run_search(cfg, Path(args.config))
    best = min(t.best_fid for r in results.values() for t in r.trials)
    target = 1.05 * best
    rows = {}
    for label, r in results.items():
        reached, total = compute_to_reach(r, target)
        rows[label] = {"trial_kimg_to_target": reached, "trial_kimg_total": total,
                       "best_fid": min(t.best_fid for t in r.trials), "seconds": r.seconds,
                       "trials": [{"config": t.config, "best_fid": t.best_fid, "kimg": t.kimg}
                                  for t in r.trials]}
        print(f"{label:<12} best FID {rows[label]['best_fid']:.2f}; trial-kimg to within 5% of "
              f"{best:.2f}: {reached:.1f} (total {total:.1f}); {r.seconds:.0f} s", flush=True)
    ratio = rows["asha_tpe"]["trial_kimg_to_target"] / rows["random_full"]["trial_kimg_to_target"]
    result = {"benchmark": "search_efficiency", "config": Path(args.config).name,
              "best_fid": best, "target_fid": target, "searches": rows,
              "ratio_asha_tpe_vs_random": ratio, "target_ratio": 0.35,
              "command": "python benchmarks/search_efficiency.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"compute ratio ASHA+TPE / random to within 5% of the best FID: {ratio:.3f} "
          f"(target <= 0.35) -> {out}")


if __name__ == "__main__":
    main()
