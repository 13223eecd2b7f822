"""Trainer overhead: steps/s of tsearch's trainer vs a bare diffusers loop, alternated.

Both train the same UNet2DModel (experiments/train-digits.yaml) on the same batch size, device
and thread count, with the same AdamW, gradient clipping and EMA; ours adds the sampler and
weighting calls, per-sample loss statistics and logging. Rounds alternate ours / bare so that
machine noise hits both alike; the ratio is the median over rounds of bare_rate / our_rate.

    python benchmarks/trainer_overhead.py [--rounds 5] [--steps 40]

Writes benchmarks/results/trainer_overhead.json. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch import names  # noqa: E402
from tsearch.data import InfiniteLoader, load_images  # noqa: E402
from tsearch.diffusion.model import build_model  # noqa: E402
from tsearch.log import quiet  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402
from tsearch.tracker import NullTracker  # noqa: E402
from tsearch.train import train  # noqa: E402


def ours(cfg, steps: int, warmup: int) -> float:
    """Images/s of tsearch's loop, from its own per-interval timing (setup excluded)."""
    tracker = NullTracker()
    with quiet():
        train(cfg, tracker=tracker, evaluate=False, max_steps=steps + warmup)
    rates = [v for _, v in tracker.history[names.IMAGES_PER_S]]
    # The first log interval covers the warm-up steps (allocator, first-call overheads).
    return statistics.fmean(rates[1:]) if len(rates) > 1 else rates[0]


def bare(cfg, steps: int, warmup: int) -> float:
    """Images/s of a plain diffusers training loop, as in diffusers' train_unconditional."""
    from diffusers import DDPMScheduler

    images = load_images(cfg.data)
    loader = InfiniteLoader(images, cfg.train.batch_size, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, images.shape[1], cfg.data.resolution).net
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, foreach=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = torch.Generator().manual_seed(0)
    start = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        x0 = loader.next_batch()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        pred = model(scheduler.add_noise(x0, noise, t), t, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.999)
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "train-digits.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "trainer_overhead.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        batch = 64
        log_every = args.steps * batch / 1000 / 4  # 4 timed intervals per round
        cfg = load_config(args.config, [
            f"train.out_dir={tmp}", "train.progress=false", "train.threads=2",
            f"train.batch_size={batch}", f"train.log_every_kimg={log_every}",
            f"train.total_kimg={(args.steps + args.warmup) * batch / 1000 + 1}",
            "eval.every_kimg=1000", "optim.warmup_kimg=0", "tracking.backend=none",
        ])
        torch.set_num_threads(2)
        rows = []
        for r in range(args.rounds):
            # Warm-up steps: enough that the first log interval ends before timing starts.
            warm = int(log_every * 1000 / batch)
            a = ours(cfg, args.steps, warm)
            b = bare(cfg, args.steps, warm)
            rows.append({"round": r, "ours_img_per_s": a, "bare_img_per_s": b, "ratio": b / a})
            print(f"round {r}: ours {a:.1f} img/s, bare {b:.1f} img/s, ratio {b / a:.3f}",
                  flush=True)
    ratios = [row["ratio"] for row in rows]
    result = {
        "benchmark": "trainer_overhead",
        "config": Path(args.config).name,
        "batch_size": batch,
        "steps_per_round": args.steps,
        "device": "cpu",
        "threads": 2,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "rounds": rows,
        "ratio_median": statistics.median(ratios),
        "target": 1.05,
        "command": "python benchmarks/trainer_overhead.py",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median slowdown ours vs bare: {result['ratio_median']:.3f} (target <= 1.05) -> {out}")


if __name__ == "__main__":
    main()
