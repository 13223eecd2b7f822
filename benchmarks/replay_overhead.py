"""What one replayed search costs: Tune's per-trial overhead when trials train nothing.

The surrogate study needs R >= 100 searches per algorithm and budget; whether that fits on 2
cores depends on Tune's cost per trial (scheduling, reporting, the searcher, the experiment
checkpoint), measured here on the quickstart space with a synthetic surrogate.

    python benchmarks/replay_overhead.py [--searches 3] [--trials 40]

Writes benchmarks/results/replay_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.replay import Synthetic, charged_kimg, eval_points, replay_search  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--searches", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--algorithm", default="tpe")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "replay_overhead.json"))
    args = ap.parse_args()
    from tsearch.log import quiet
    from tsearch.search.ray_runtime import end_session, init_ray

    cfg = load_config(args.config, [f"search.algorithm={args.algorithm}"])
    surrogate = Synthetic(eval_points(cfg))
    session = init_ray(None)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.searches):
                start = time.perf_counter()
                with quiet():
                    events, trials = replay_search(cfg, surrogate, seed=i,
                                                   num_samples=args.trials, storage=tmp)
                seconds = time.perf_counter() - start
                rows.append({"seconds": seconds, "trials": len(trials),
                             "reports": len(events), "trial_kimg": charged_kimg(events),
                             "seconds_per_trial": seconds / max(len(trials), 1)})
                print(f"search {i}: {len(trials)} trials, {len(events)} reports, "
                      f"{seconds:.1f} s ({rows[-1]['seconds_per_trial']:.2f} s per trial)",
                      flush=True)
    finally:
        if session is not None:
            end_session(session)
    per_trial = statistics.median(r["seconds_per_trial"] for r in rows)
    out = {"benchmark": "replay_overhead", "algorithm": args.algorithm,
           "config": Path(args.config).name, "searches": rows,
           "median_seconds_per_trial": per_trial,
           "command": "python benchmarks/replay_overhead.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"median {per_trial:.2f} s per replayed trial -> {args.out}")


if __name__ == "__main__":
    main()
