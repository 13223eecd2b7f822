"""The tabulated benchmark behind the search surrogate: real learning curves of many configurations.

Comparing search algorithms needs hundreds of searches; on 2 cores one real search costs tens of
minutes. The field's answer (LCBench, YAHPO Gym, Syne Tune's blackbox repository) is to train a
fixed set of configurations once, on several seeds, and replay searches against the table. This
script builds that table for the quickstart space:

- configurations: every sampler at its registry defaults, random draws from the space (Optuna's
  RandomSampler, seeded) and configurations TPE proposed in the recorded searches of
  ``benchmarks/search_efficiency.py``;
- each trained on every seed of ``--seeds`` (the search's training seed 0, a second search seed,
  and the confirmation seeds 101-103), evaluated at the search's evaluation setting at every ASHA
  rung (4, 12 kimg), every confirmation evaluation (every 5 kimg) and the end.

Resumable: a configuration's runs are keyed by its hash and written to ``--out`` as each run
finishes; a rerun trains only what is missing. ``--max-minutes`` stops between runs (the runs in
flight finish and are kept).

    python benchmarks/search_table.py [--random 35] [--tpe 35] [--workers 2] [--max-minutes 60]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search_efficiency import config_key, default_configs  # noqa: E402
from tsearch.config import merge_flat  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

EVAL_KIMG = (4.0, 5.0, 10.0, 12.0, 15.0, 20.0)  # ASHA rungs 4/12, confirmation every 5, the end
SEEDS = (0, 101, 102, 103, 1)  # seed-major: the 4 seeds a confirmation compares come first


def random_configs(config: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` draws from the search space, as the search's random algorithm would draw them."""
    import optuna

    from tsearch.search.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_config(load_config(config))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    define = space.define_by_run()
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = define(trial) or {}
        out.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return out


def tpe_configs(searches: Path, n: int, exclude: set[str]) -> list[dict[str, Any]]:
    """The first ``n`` distinct configurations TPE's model proposed in the recorded
    search-efficiency searches (past the seeded points and random startup trials, which are not
    TPE's), round-robin over searches so every search contributes; none whose key is in
    ``exclude``."""
    if not searches.is_file():
        return []
    data = json.loads(searches.read_text())
    lists = []
    for name in sorted(data):
        run = data[name]
        if not run["algorithm"].startswith("tpe"):
            continue
        trials = list(run["trials"].values())
        # Optuna counts enqueued points as startup trials: 10 defaults, or the baseline + 4 random.
        trials = trials[10:] if run["algorithm"] == "tpe_asha_defaults" else trials[5:]
        lists.append([{k: v for k, v in t.items() if k != "train.seed"} for t in trials])
    out: dict[str, dict[str, Any]] = {}
    depth = 0
    while len(out) < n and any(depth < len(x) for x in lists):
        for x in lists:
            key = config_key(x[depth]) if depth < len(x) else ""
            if key and key not in exclude and len(out) < n:
                out.setdefault(key, x[depth])
        depth += 1
    return list(out.values())


def _train_one(args: tuple[dict[str, Any], dict[str, Any], int, str]
               ) -> tuple[int, dict[str, Any]]:
    """One training run (its own process, one thread): FID at every ``EVAL_KIMG`` point.

    ``base`` is the config as a dict, read once by the parent: an edit of the YAML file while
    the table is being built cannot change (or break) the runs still to come."""
    base, values, seed, scratch = args
    from tsearch.log import quiet
    from tsearch.timesteps import validate_config
    from tsearch.train import train

    raw = merge_flat(base, {**values, "train.seed": seed, "train.threads": 1,
                            "train.progress": False, "tracking.backend": "none",
                            "eval.at_kimg": list(EVAL_KIMG),
                            "eval.cache_dir": f"{scratch}/cache",
                            "train.out_dir": f"{scratch}/runs"})
    start = time.monotonic()
    try:
        with quiet():  # a config error is a failed run too: recorded, not fatal to the table
            result = train(validate_config(raw))
    except Exception as exc:  # a diverged or failed run is a result (no FID), not a crash
        return seed, {"error": str(exc).splitlines()[0][:300],
                      "seconds": time.monotonic() - start}
    shutil.rmtree(result.run_dir, ignore_errors=True)  # only its curve is kept
    return seed, {"fid": {f"{k:g}": f for k, f in result.fid_history},
                  "kimg": result.kimg, "seconds": time.monotonic() - start}


def _save(path: Path, table: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=None, separators=(",", ":"), default=str) + "\n")
    tmp.replace(path)


def build(config: str, configs: dict[str, tuple[str, dict[str, Any]]], seeds: Sequence[int],
          out: Path, scratch: Path, workers: int, deadline: float) -> dict[str, Any]:
    """Train every (configuration, seed) missing from ``out``; the table as it stands at the end."""
    table: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    table.setdefault("eval_kimg", list(EVAL_KIMG))
    table.setdefault("config", Path(config).name)
    rows = table.setdefault("configs", {})
    for key, (source, values) in configs.items():
        rows.setdefault(key, {"source": source, "values": values, "runs": {}})
    # Seed-major order: every configuration gets its first seed before any gets its second, so a
    # table stopped early is still a usable (if noisier) table.
    jobs = [(key, seed) for seed in seeds for key in configs
            if str(seed) not in rows[key]["runs"]]
    total = len(jobs)
    base = load_config(config).to_dict()
    base["search"] = {}
    print(f"{len(configs)} configurations x {len(seeds)} seeds: {total} runs to train "
          f"({workers} at once)", flush=True)
    done = 0
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: dict[Any, tuple[str, int]] = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < workers and time.monotonic() < deadline:
                key, seed = queue.pop(0)
                args = (base, rows[key]["values"], seed, str(scratch))
                pending[pool.submit(_train_one, args)] = (key, seed)
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                key, seed = pending.pop(future)
                _, run = future.result()
                rows[key]["runs"][str(seed)] = run
                _save(out, table)
                done += 1
                rate = (time.monotonic() - started) / done
                curve = list(run.get("fid", {}).values())
                shown = f"final FID {curve[-1]:.2f}" if curve else run.get("error", "no FID")
                print(f"[{done}/{total}] {rows[key]['source']:<18} {key} seed {seed}: {shown} "
                      f"({run['seconds']:.0f} s; ~{rate * (total - done) / 60:.0f} min left)",
                      flush=True)
    if done < total:
        print(f"stopped at the time limit: {total - done} runs left; rerun to continue",
              flush=True)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--random", type=int, default=35, help="random draws from the space")
    ap.add_argument("--tpe", type=int, default=35, help="TPE proposals from recorded searches")
    ap.add_argument("--random-seed", type=int, default=2026)
    ap.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=math.inf)
    ap.add_argument("--searches", default=str(ROOT / "benchmarks" / "results" /
                                              "search_efficiency" / "searches.json"))
    ap.add_argument("--scratch", default=str(ROOT / "tsearch-runs" / "search_table"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_table.json"))
    args = ap.parse_args()
    deadline = time.monotonic() + 60 * args.max_minutes
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    configs: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, values in default_configs(args.config).items():
        configs[config_key(values)] = (f"default:{name}", values)
    for values in random_configs(args.config, args.random, args.random_seed):
        configs.setdefault(config_key(values), ("random", values))
    for values in tpe_configs(Path(args.searches), args.tpe, set(configs)):
        configs.setdefault(config_key(values), ("tpe", values))
    seeds = [int(s) for s in args.seeds.split(",")]
    table = build(args.config, configs, seeds, Path(args.out), scratch, args.workers, deadline)
    table["command"] = "python benchmarks/search_table.py " + " ".join(sys.argv[1:])
    _save(Path(args.out), table)
    print(f"-> {args.out}", flush=True)


if __name__ == "__main__":
    main()
