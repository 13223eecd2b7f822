"""Generation speed: diffusers' schedulers (generate_images) vs the hand-written loop they replaced.

The old loop is the oracle of tests/test_generate_diffusers.py (the pre-diffusers sampler). Both
generate with the quickstart network (UNet channels (32, 64), no attention; 1 x 8 x 8, linear
schedule, eps) on one CPU thread; old and new alternate within each repeat (taking turns to go
first) so machine noise hits both alike. Reported: the median over repeats of each, new / old,
and the same with a network that costs nothing (``loop_only_*``: the sampling loop's overhead).

    python benchmarks/generation_speed.py [--repeats 5] [--method ddim]

Writes benchmarks/results/generation_speed.json. Target: new <= 1.10x old.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.config import ModelConfig  # noqa: E402
from tsearch.diffusion.generate import generate_images  # noqa: E402
from tsearch.diffusion.model import build_model  # noqa: E402
from tsearch.diffusion.schedule import NoiseSchedule  # noqa: E402


def load_oracle():
    """``oracle_generate`` from the test file (tests/ is not a package)."""
    path = ROOT / "tests" / "test_generate_diffusers.py"
    spec = importlib.util.spec_from_file_location("generate_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle_generate


class Free(torch.nn.Module):
    """A network that costs nothing: what is left is the sampling loop's own overhead."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--method", default="ddim")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--cases", nargs="*", default=["200x10", "500x20"],
                    help="IMAGESxSTEPS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "generation_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=(32, 64), attention=(False, False)), channels=1,
                        resolution=8)
    schedule = NoiseSchedule.create("linear")
    oracle = load_oracle()
    rows = []
    for case in args.cases:
        images, steps = (int(v) for v in case.split("x"))
        kwargs = dict(method=args.method, steps=steps, eta=args.eta, seed=0, batch_size=500)
        old_images = oracle(model, schedule, images, (1, 8, 8), **kwargs)  # also warm-up
        new_images = generate_images(model, schedule, images, (1, 8, 8), **kwargs)
        row = {"images": images, "steps": steps,
               "max_abs_diff": float((old_images - new_images).abs().max())}
        for label, net in (("", model), ("loop_only_", Free())):
            old, new = [], []
            for r in range(args.repeats):  # alternate which goes first
                pair = [(old, oracle), (new, generate_images)][:: 1 if r % 2 == 0 else -1]
                for times, fn in pair:
                    times.append(seconds(fn, net, schedule, images, (1, 8, 8), **kwargs))
            row |= {f"{label}old_s": old, f"{label}new_s": new,
                    f"{label}old_median_s": statistics.median(old),
                    f"{label}new_median_s": statistics.median(new),
                    f"{label}new_over_old": statistics.median(new) / statistics.median(old)}
        rows.append(row)
        print(f"{images} images x {steps} steps: old {row['old_median_s']:.3f} s, new "
              f"{row['new_median_s']:.3f} s, new/old {row['new_over_old']:.3f}; loop alone: "
              f"old {1e3 * row['loop_only_old_median_s']:.1f} ms, new "
              f"{1e3 * row['loop_only_new_median_s']:.1f} ms")
    result = {
        "benchmark": "generation_speed",
        "method": args.method,
        "eta": args.eta,
        "model": "UNet2DModel channels (32, 64), no attention, 1x8x8, linear, eps",
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "diffusers": importlib.import_module("diffusers").__version__,
        "cases": rows,
        "target": 1.10,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
