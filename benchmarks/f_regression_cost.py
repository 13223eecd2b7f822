"""Adaptive's F-test: our f_regression_scores vs sklearn's f_regression, and sklearn's import.

Per call: the median over ``--calls`` calls on a queue of ``queue_size`` rows against the row sums
(what ``select_features`` scores), for our torch function and for sklearn's f_regression given
the same tensor (with the numpy round trip the sampler would need, and without). Import: the
wall time of ``import sklearn.feature_selection`` in fresh processes, alone and after what a trial
has already imported (torch, numpy, scipy.special, diffusers), median over ``--imports``.

    python benchmarks/f_regression_cost.py [--calls 2000] [--imports 5]

Writes benchmarks/results/f_regression_cost.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch.timesteps.adaptive_policy import f_regression_scores  # noqa: E402

_IMPORT = """
import time
{pre}
start = time.perf_counter()
import sklearn.feature_selection
print(time.perf_counter() - start)
"""
_TRIAL_IMPORTS = "import torch, numpy, scipy.special, diffusers, diffusers.models"


def per_call_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def import_s(pre: str, repeats: int) -> list[float]:
    code = _IMPORT.format(pre=pre)
    return [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout) for _ in range(repeats)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--imports", type=int, default=5)
    ap.add_argument("--sizes", nargs="*", default=["20x1000", "20x100"], help="ROWSxCOLUMNS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "f_regression_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cold = import_s("", args.imports)
    warm = import_s(_TRIAL_IMPORTS, args.imports)
    from sklearn.feature_selection import f_regression

    rows = []
    for size in args.sizes:
        n, d = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(0)
        queue = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.01
        y = queue.sum(dim=1)
        ours = per_call_us(lambda q=queue, y=y: f_regression_scores(q, y), args.calls)
        qn, yn = queue.numpy(), y.numpy()
        bare = per_call_us(lambda q=qn, y=yn: f_regression(q, y), args.calls)
        round_trip = per_call_us(
            lambda q=queue, y=y: torch.from_numpy(f_regression(q.numpy(), y.numpy())[0]),
            args.calls)
        max_rel = float(np.max(np.abs(f_regression_scores(queue, y).numpy()
                                      / f_regression(qn, yn)[0] - 1.0)))
        rows.append({"rows": n, "columns": d, "ours_us": ours, "sklearn_us": bare,
                     "sklearn_with_torch_round_trip_us": round_trip,
                     "max_rel_diff_scores": max_rel})
        print(f"{n}x{d}: ours {ours:.0f} us, sklearn {bare:.0f} us "
              f"({round_trip:.0f} us with the torch round trip), max rel diff {max_rel:.1e}")
    result = {
        "benchmark": "f_regression_cost",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": __import__("sklearn").__version__,
        "calls": args.calls,
        "per_call": rows,
        "import_sklearn_feature_selection_cold_s": cold,
        "import_sklearn_feature_selection_cold_median_s": statistics.median(cold),
        "import_after_trial_imports": _TRIAL_IMPORTS,
        "import_sklearn_feature_selection_after_trial_imports_s": warm,
        "import_sklearn_feature_selection_after_trial_imports_median_s": statistics.median(warm),
    }
    print(f"import sklearn.feature_selection: cold {statistics.median(cold):.3f} s, "
          f"after trial imports {statistics.median(warm):.3f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
