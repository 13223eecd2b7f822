"""How far the adaptive sampler's p(t) moved in the runs of a search: entropy and TV from uniform.

Reads each trial's run directory in the search's storage (``run/metrics.jsonl``, written by the
trainer at every log interval) and reports, per trial and per method, the minimum, median and
final p(t) entropy (nats; uniform is ln T) and the final total-variation distance from uniform.

    python benchmarks/adaptive_pt_stats.py tsearch-runs/ray/replicate-adaptive \
        --out benchmarks/results/replicate-adaptive/adaptive_pt_stats.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.search.space import flat_config  # noqa: E402


def trial_stats(metrics: Path) -> dict[str, float] | None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    ent = [r["sampler/entropy"] for r in rows if "sampler/entropy" in r]
    tv = [r["sampler/tv_uniform"] for r in rows if "sampler/tv_uniform" in r]
    if not ent:
        return None
    return {"entropy_min": min(ent), "entropy_median": statistics.median(ent),
            "entropy_final": ent[-1], "tv_uniform_final": tv[-1] if tv else math.nan,
            "tv_uniform_max": max(tv) if tv else math.nan, "intervals": len(ent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_dir", type=Path, help="the search's directory in its storage")
    ap.add_argument("--sampler", default="adaptive")
    ap.add_argument("--num-timesteps", type=int, default=1000, help="T (uniform entropy ln T)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    trials = {}
    for params in sorted(args.search_dir.glob("*/params.json")):
        config = flat_config(json.loads(params.read_text()))  # grid cells nest under one key
        if not str(config.get("timesteps.sampler.name", config.get("method", ""))).startswith(
                args.sampler):
            continue
        stats = trial_stats(params.parent / "run" / "metrics.jsonl")
        if stats is None:
            continue
        label = " ".join(str(config.get(k, "")) for k in ("method", "diffusion.schedule"))
        trials[params.parent.name] = {"method": label.strip(), "seed": config.get("train.seed"),
                                      **stats}
    by_method: dict[str, dict[str, float]] = {}
    for method in sorted({t["method"] for t in trials.values()}):
        rows = [t for t in trials.values() if t["method"] == method]
        by_method[method] = {
            k: statistics.fmean(r[k] for r in rows)
            for k in ("entropy_min", "entropy_median", "entropy_final", "tv_uniform_final")}
        by_method[method]["seeds"] = len(rows)
    result = {"benchmark": "adaptive_pt_stats", "search_dir": str(args.search_dir),
              "max_entropy": math.log(args.num_timesteps), "methods": by_method,
              "trials": trials}
    for method, row in by_method.items():
        print(f"{method:<32} entropy min {row['entropy_min']:.3f} median "
              f"{row['entropy_median']:.3f} final {row['entropy_final']:.3f}; TV from uniform at "
              f"the end {row['tv_uniform_final']:.3f} ({row['seeds']} seeds)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
