"""Step time of every registered timestep sampler relative to uniform, probe cost included.

Each sampler trains the digits model of experiments/train-digits.yaml at its default
hyperparameters through the real trainer (no evaluation); samplers are alternated within each
round so machine noise hits all alike. Time is read from the trainer's own per-interval
images/s; each interval spans ``--interval`` steps, a whole number of adaptive's probe periods.

    python benchmarks/sampler_overhead.py [--rounds 3] [--interval 40] [--intervals 2]

Writes benchmarks/results/sampler_overhead.json. Target: adaptive <= 1.15x uniform with
``scan_stride: 10``; its default, the reference full-T scan, costs about 4x the probe passes
(``--variants adaptive-stride10=adaptive:scan_stride=10`` measures both).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch import names  # noqa: E402
from tsearch.log import quiet  # noqa: E402
from tsearch.timesteps import SAMPLERS, load_config  # noqa: E402
from tsearch.tracker import NullTracker  # noqa: E402
from tsearch.train import train  # noqa: E402


def images_per_s(cfg, steps: int) -> tuple[float, float]:
    """Mean images/s over the timed intervals (the first interval is warm-up)."""
    tracker = NullTracker()
    with quiet():
        train(cfg, tracker=tracker, evaluate=False, max_steps=steps)
    rates = [v for _, v in tracker.history[names.IMAGES_PER_S]][1:]
    probe = tracker.history[names.PROBE_FORWARDS][-1][1]
    return statistics.fmean(rates), probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "train-digits.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval", type=int, default=40, help="steps per timed interval")
    ap.add_argument("--intervals", type=int, default=2, help="timed intervals per run")
    ap.add_argument("--samplers", nargs="*", default=sorted(SAMPLERS))
    ap.add_argument("--variants", nargs="*", default=[],
                    help="extra rows LABEL=SAMPLER[:k=v,...] (sampler params), e.g. "
                    "adaptive-stride10=adaptive:scan_stride=10")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. for settings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "sampler_overhead.json"))
    args = ap.parse_args()
    runs = {n: [f"timesteps.sampler.name={n}"] for n in args.samplers}
    for spec in args.variants:  # LABEL=SAMPLER[:k=v,...]
        label, _, rest = spec.partition("=")
        sampler, _, params = rest.partition(":")
        runs[label] = [f"timesteps.sampler.name={sampler}"] + [
            f"timesteps.sampler.params.{kv}" for kv in params.split(",") if kv]
    runs.setdefault("uniform", ["timesteps.sampler.name=uniform"])
    names = ["uniform"] + [n for n in runs if n != "uniform"]
    batch = 64
    steps = args.interval * (args.intervals + 1)
    rates: dict[str, list[float]] = {n: [] for n in names}
    probes: dict[str, float] = {}
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # Rotate the order each round: the first run of a round was seen to be faster.
            for name in names[r % len(names):] + names[:r % len(names)]:
                cfg = load_config(args.config, [
                    f"train.out_dir={tmp}", "train.progress=false", "train.threads=2",
                    f"train.batch_size={batch}",
                    f"train.log_every_kimg={args.interval * batch / 1000}",
                    f"train.total_kimg={steps * batch / 1000 + 1}", "eval.every_kimg=1000",
                    "tracking.backend=none", *runs[name], *args.set,
                ])
                rate, probe = images_per_s(cfg, steps)
                rates[name].append(rate)
                probes[name] = probe / (steps * batch)
                print(f"round {r} {name:<11} {rate:7.1f} img/s", flush=True)
    base = statistics.median(rates["uniform"])
    table = {
        name: {
            "img_per_s_median": statistics.median(v),
            "step_time_vs_uniform": base / statistics.median(v),
            "probe_forwards_per_train_image": probes[name],
        }
        for name, v in rates.items()
    }
    result = {
        "benchmark": "sampler_overhead",
        "config": Path(args.config).name,
        "overrides": args.set,
        "batch_size": batch,
        "steps_per_run": steps,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, 2 threads, cpu",
        "samplers": table,
        "raw_img_per_s": rates,
        "target": {"adaptive": 1.15},
        "command": "python benchmarks/sampler_overhead.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in table.items():
        print(f"{name:<11} {row['step_time_vs_uniform']:.3f}x uniform "
              f"(probe forwards per training image {row['probe_forwards_per_train_image']:.3f})")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
