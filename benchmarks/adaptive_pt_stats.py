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

from tsearch import names  # noqa: E402
from tsearch.search.space import flat_config  # noqa: E402


def trial_stats(metrics: Path) -> dict[str, float] | None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    ent = [r["sampler/entropy"] for r in rows if "sampler/entropy" in r]
    tv = [r["sampler/tv_uniform"] for r in rows if "sampler/tv_uniform" in r]
    if not ent:
        return None
    std = [r["sampler/reward_std"] for r in rows if "sampler/reward_std" in r]
    mean = [r["sampler/reward"] for r in rows if "sampler/reward" in r]
    # The largest change of the policy's mean log concentration between two log points: the
    # jump docs/algorithms.md 1.9 describes (about 10 in one update in the paper's form).
    ab = [(r["sampler/alpha_mean"], r["sampler/beta_mean"]) for r in rows
          if "sampler/alpha_mean" in r]
    jumps = [max(abs(math.log(a1 / a0)), abs(math.log(b1 / b0)))
             for (a0, b0), (a1, b1) in zip(ab, ab[1:], strict=False)]
    collapsed = [r.get(names.PROGRESS_KIMG) for r in rows if names.collapse_problem(r)]
    return {"entropy_min": min(ent), "entropy_median": statistics.median(ent),
            "entropy_final": ent[-1], "tv_uniform_final": tv[-1] if tv else math.nan,
            "tv_uniform_max": max(tv) if tv else math.nan, "intervals": len(ent),
            "reward_std_median": statistics.median(std) if std else math.nan,
            "reward_mean_median": statistics.median(mean) if mean else math.nan,
            "log_concentration_jump_max": max(jumps) if jumps else math.nan,
            "collapsed_at_kimg": collapsed[0] if collapsed else None}


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
        label = " ".join(str(config.get(k, "")) for k in ("method", "diffusion.schedule",
                                                           "budget"))
        trials[params.parent.name] = {"method": label.strip(), "seed": config.get("train.seed"),
                                      **stats}
    by_method: dict[str, dict[str, float]] = {}
    for method in sorted({t["method"] for t in trials.values()}):
        rows = [t for t in trials.values() if t["method"] == method]
        by_method[method] = {
            k: statistics.fmean(r[k] for r in rows)
            for k in ("entropy_min", "entropy_median", "entropy_final", "tv_uniform_final",
                      "reward_std_median", "reward_mean_median", "log_concentration_jump_max")}
        by_method[method]["seeds"] = len(rows)
        by_method[method]["collapsed"] = sum(r["collapsed_at_kimg"] is not None for r in rows)
    result = {"benchmark": "adaptive_pt_stats", "search_dir": str(args.search_dir),
              "max_entropy": math.log(args.num_timesteps), "methods": by_method,
              "trials": trials}
    for method, row in by_method.items():
        print(f"{method:<32} entropy min {row['entropy_min']:.3f} median "
              f"{row['entropy_median']:.3f} final {row['entropy_final']:.3f}; TV from uniform at "
              f"the end {row['tv_uniform_final']:.3f}; reward sd {row['reward_std_median']:.3f} "
              f"mean {row['reward_mean_median']:.3f}; largest log-concentration jump "
              f"{row['log_concentration_jump_max']:.2f}; collapsed {row['collapsed']}/"
              f"{row['seeds']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
