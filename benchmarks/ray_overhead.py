"""Ray overhead: the same training run inside a one-trial Ray search vs `tsearch train`.

Both run the quickstart model with the same config (uniform sampler, 2 threads, FID every
`--every` kimg) as separate processes, alternated; wall time from process start to exit, so the
search pays for starting Ray, the trial actor, checkpoint reporting and MLflow parent/child runs.
Each round also keeps the search driver's own breakdown (``tsearch search --verbose``).

    python benchmarks/ray_overhead.py [--kimg 40] [--rounds 2]

Writes benchmarks/results/ray_overhead.json. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "quickstart.yaml"


def timed(args: list[str], cwd: str) -> tuple[float, str]:
    """Wall seconds of one CLI process, and its stderr."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stderr


def stages(stderr: str) -> dict[str, float]:
    """The search driver's ``--verbose`` line (``time: Ray start 3.1 s, ...``) as a dict."""
    lines = [x for x in stderr.splitlines() if x.startswith("time: ")]
    if not lines:
        return {}
    return {name.strip(): float(s)
            for name, s in re.findall(r"([^,:]+?) (\d+(?:\.\d+)?) s", lines[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kimg", type=float, default=40.0)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_overhead.json"))
    args = ap.parse_args()
    common = ["--set", f"train.total_kimg={args.kimg}", "--set", f"eval.every_kimg={args.every}",
              "--set", "train.threads=2", "--set", "train.progress=false",
              "--set", "timesteps.sampler.name=uniform"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            train_s, _ = timed(["train", str(CONFIG), *common,
                             "--set", f"tracking.uri=sqlite:///{tmp}/train.db"], tmp)
            search_s, said = timed(["search", str(CONFIG), *common,
                              "--set", f"tracking.uri=sqlite:///{tmp}/search.db",
                              "--set", f"search.storage_path={tmp}/ray",
                              "--set", f"search.name=overhead-{r}",
                              "--set", "search.num_samples=1", "--set", "search.cpus_per_trial=2",
                              "--set", "search.asha.enabled=false", "--set",
                              "search.space={timesteps.sampler.name: {choice: [uniform]}}",
                              "--set", "search.points_to_evaluate=[]",
                              "--set", "search.seed_with_defaults=false",
                              "--set", "search.confirm.enabled=false", "--verbose"], tmp)
            rows.append({"round": r, "train_s": train_s, "search_s": search_s,
                         "ratio": search_s / train_s, "search_stages": stages(said)})
            print(f"round {r}: tsearch train {train_s:.1f} s, one-trial search {search_s:.1f} s, "
                  f"ratio {search_s / train_s:.3f}", flush=True)
            print("  search " + next((x for x in said.splitlines() if x.startswith("time: ")),
                                     "time: (no breakdown)"), flush=True)
    result = {"benchmark": "ray_overhead", "config": CONFIG.name, "kimg": args.kimg,
              "eval_every_kimg": args.every, "rounds": rows,
              "ratio_median": statistics.median(r["ratio"] for r in rows), "target": 1.05,
              "command": "python benchmarks/ray_overhead.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median wall-time ratio search / train: {result['ratio_median']:.3f} "
          f"(target <= 1.05) -> {out}")


if __name__ == "__main__":
    main()
