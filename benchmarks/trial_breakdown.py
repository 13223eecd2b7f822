"""Where a search trial's wall time goes: train, evaluation, other (issue 15).

Reads the ``perf/*`` metrics every trial logs at its evaluations (the last record covers the
trial from the start of its function to its last report) from a real search's MLflow store;
run it after ``make demo``, which searches ``experiments/quickstart.yaml``. Reports the median
and range over trials of each share, per phase (search trials, confirmation runs), and the
targets: evaluation <= 20% and other <= 5% of a search trial's wall time (median).

    python benchmarks/trial_breakdown.py [--search quickstart] [--tracking-uri URI]

Writes benchmarks/results/trial_breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch import names  # noqa: E402

TARGETS = {"eval_share": 0.20, "other_share": 0.05}


def shares(metrics: dict[str, float]) -> dict[str, float] | None:
    """A trial's train / eval / other shares from its last perf/* record (None: not logged)."""
    if names.PERF_EVAL_SHARE not in metrics:
        return None
    wall = metrics[names.PERF_WALL_SECONDS]
    train = metrics[names.PERF_TRAIN_SECONDS] / wall
    return {"wall_seconds": wall, "train_share": train,
            "eval_share": metrics[names.PERF_EVAL_SHARE],
            "other_share": metrics[names.PERF_OVERHEAD_SHARE]}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each share over ``rows`` (one per trial)."""
    out: dict[str, Any] = {"trials": len(rows)}
    for key in ("wall_seconds", "train_share", "eval_share", "other_share"):
        values = [r[key] for r in rows]
        out[key] = ({"median": statistics.median(values), "min": min(values),
                     "max": max(values)} if values else None)
    return out


def main() -> None:
    from tsearch.tracking.queries import find_search, trial_runs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search", default="quickstart", help="search name or parent run id")
    ap.add_argument("--tracking-uri", default=f"sqlite:///{ROOT}/tsearch-runs/mlflow.db")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "trial_breakdown.json"))
    args = ap.parse_args()
    parent = find_search(args.tracking_uri, args.search)
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for run in trial_runs(args.tracking_uri, parent):
        row = shares(run.latest)
        if row is None:
            continue
        row.update({"run_id": run.run_id, "name": run.name,
                    "kimg": run.latest.get(names.PROGRESS_KIMG)})
        by_phase.setdefault(run.phase or names.PHASE_SEARCH, []).append(row)
    if not by_phase:
        raise SystemExit(f"search {parent.name!r} has no trial with perf/* metrics: run a "
                         "search with this version (make demo) first")
    phases = {phase: {**summarise(rows), "runs": rows} for phase, rows in by_phase.items()}
    search = phases.get(names.PHASE_SEARCH)
    met = None if search is None else {
        k: search[k]["median"] <= v for k, v in TARGETS.items()}
    result = {"benchmark": "trial_breakdown", "search": parent.name,
              "parent_run_id": parent.run_id, "phases": phases, "targets": TARGETS,
              "targets_met": met,
              "command": "python benchmarks/trial_breakdown.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for phase, row in phases.items():
        med = {k: row[k]["median"] for k in ("wall_seconds", "train_share", "eval_share",
                                             "other_share")}
        print(f"{phase:<8} {row['trials']:3d} runs  median wall {med['wall_seconds']:6.1f} s  "
              f"train {med['train_share']:5.1%}  eval {med['eval_share']:5.1%}  "
              f"other {med['other_share']:5.1%}")
    print(f"targets (search trials, median): eval <= 20%, other <= 5%: {met} -> {out}")


if __name__ == "__main__":
    main()
