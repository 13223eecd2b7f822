"""Fidelity by evidence: how cheap can an evaluation be and still rank models like a costly one?

Trains a few runs of the quickstart (one per timestep sampler, each at its paper's weighting) with
the real trainer and keeps the EMA weights at several kimg, so that the models span the quality
range a search sees (default 5 runs x 6 kimg = 30 models). Each model gets a reference FID at
high fidelity (2000 images, 50 DDIM steps, its own latents) and the FID of a grid of cheaper
settings (images x DDIM steps, always including the quickstart's current one), all through the
project's own FID path (``tsearch.metrics.build_evaluations``). A held-out denoising loss (the
unweighted MSE of the EMA model on fixed held-out images, noise and stratified timesteps) is
measured the same way as a cheaper proxy.

Per setting it reports the Spearman rank correlation with the reference ranking (over all
models, and within each kimg, which is what an ASHA rung compares), the mean and max absolute
FID error, the median seconds per evaluation on this machine and the cost relative to the
quickstart's setting; then the cheapest setting with rho >= 0.95 over all models and within
each kimg (on average), for the final evaluation (FID settings) and for rungs (FID settings or a
proxy). None qualifying is written as null: keep the reference setting.

Resumable and incremental: EMA weights and every finished evaluation are kept in ``--work``
(``evals.json``); a rerun skips them, and ``--max-minutes`` stops cleanly between runs and
between models (the summary covers what is done). Evaluations run in this process on
``--threads`` (default 1, as a search trial's do), so their seconds are a trial's costs.

    python benchmarks/eval_fidelity.py [--max-minutes 120]   # the full benchmark
    python benchmarks/eval_fidelity.py --quick              # ~2 minutes: 4 models, 3 FIDs

Writes benchmarks/results/eval_fidelity.json and .png (``--quick``: under tsearch-runs/).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsearch import names  # noqa: E402
from tsearch.config import Config  # noqa: E402
from tsearch.data import resolved_channels  # noqa: E402
from tsearch.timesteps import load_config  # noqa: E402

THRESHOLD = 0.95  # rank correlation a cheaper setting must reach (issue 15)
REFERENCE_SEED_OFFSET = 1_000_000  # reference latents disjoint from the cheap settings' latents
FULL = {"runs": "uniform,lognormal,speed,lsm,adaptive", "kimg": "1,2,4,8,12,20",
        "reference": "2000x50", "images": "200,300,500,1000", "steps": "5,10,20,50",
        "proxy_sizes": "256,1024,4096"}
QUICK = {"runs": "uniform,lognormal", "kimg": "0.5,2", "reference": "600x20",
         "images": "200", "steps": "5,10", "proxy_sizes": "256,1024"}
RUN_OVERRIDES = {  # extra overrides per sampler: the quickstart space's choices
    "adaptive": ["timesteps.sampler.params.scan_stride=10"],
}


@dataclass(frozen=True)
class Setting:
    """One way of scoring a model: FID at (num_images, steps), or the held-out loss at size."""

    kind: str  # "fid" | "proxy"
    num_images: int = 0  # fid: generated images
    steps: int = 0  # fid: DDIM steps
    size: int = 0  # proxy: (image, noise, timestep) triples
    reference: bool = False

    @property
    def name(self) -> str:
        if self.kind == "proxy":
            return f"proxy-mse-{self.size}"
        return f"{'ref-' if self.reference else ''}fid-{self.num_images}x{self.steps}"

    @property
    def forwards(self) -> int:
        """Network evaluations per model: the machine-independent part of the cost."""
        return self.size if self.kind == "proxy" else self.num_images * self.steps


# --- Pure parts (tested in tests/test_eval_fidelity.py) ------------------------------------
def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing the mean of the ranks they span (as scipy's rankdata)."""
    values = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank each distinct value spans
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks (Spearman 1904; ties as scipy).

    Pairs where either value is not finite (a diverged model's NaN FID) are left out; NaN when
    fewer than 2 pairs remain or one side is constant (no ranking to agree with).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired values, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return math.nan
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if denom == 0.0:
        return math.nan
    return float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def spearman_within(a: Sequence[float], b: Sequence[float], groups: Sequence[Any],
                    min_size: int = 3) -> float | None:
    """Mean Spearman within groups (e.g. models at the same kimg: what an ASHA rung compares).

    Groups with fewer than ``min_size`` finite pairs or no ranking are skipped; None if none is
    left.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    labels = np.asarray([str(g) for g in groups])
    rhos = []
    for g in np.unique(labels):
        sel = (labels == g) & np.isfinite(x) & np.isfinite(y)
        if sel.sum() >= min_size:
            rho = spearman(x[sel], y[sel])
            if math.isfinite(rho):
                rhos.append(rho)
    return float(np.mean(rhos)) if rhos else None


def cheapest_at(rows: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD,
                kinds: Sequence[str] = ("fid",)) -> Mapping[str, Any] | None:
    """The lowest-cost row of ``kinds`` whose ``rho`` reaches ``threshold``, or None.

    Where a row has ``rho_within_kimg`` it must reach ``threshold`` too: an ASHA rung and the
    end of a search compare models trained equally long, and a setting can order bad and good
    models right overall (a wide spread) yet shuffle close ones. Cost is ``median_seconds``
    (measured here), ties broken by ``forwards`` then ``name``. None means no cheaper setting
    ranks like the reference: keep evaluating at the reference setting. Rows without a finite
    rho or cost never qualify.
    """
    def reaches(rho: float | None) -> bool:
        return rho is not None and math.isfinite(rho) and rho >= threshold

    def ok(row: Mapping[str, Any]) -> bool:
        cost = row.get("median_seconds")
        within = row.get("rho_within_kimg", threshold)
        return (row.get("kind") in kinds and reaches(row.get("rho"))
                and (within is None or reaches(within))
                and cost is not None and math.isfinite(cost))

    found = [r for r in rows if ok(r)]
    if not found:
        return None
    return min(found, key=lambda r: (r["median_seconds"], r.get("forwards", 0), r["name"]))


def _finite(v: float | None) -> float | None:
    """JSON has no NaN: a missing or failed value is null."""
    return None if v is None or not math.isfinite(v) else float(v)


def summarise(models: Sequence[Mapping[str, Any]],
              evals: Mapping[str, Mapping[str, Mapping[str, float]]],
              reference: Setting, settings: Sequence[Setting], baseline: Setting,
              threshold: float = THRESHOLD) -> dict[str, Any]:
    """Per-setting agreement with the reference ranking, errors and costs; the choices.

    ``models`` are dicts with ``id`` and ``kimg``; ``evals[model_id][setting_name]`` holds
    ``value`` (FID or loss) and ``seconds``. Only models with a finite reference FID count.
    """
    ref_of = {m["id"]: evals.get(m["id"], {}).get(reference.name, {}).get("value")
              for m in models}
    scored = [m for m in models if ref_of[m["id"]] is not None and math.isfinite(ref_of[m["id"]])]
    ref_seconds = [evals[m["id"]][reference.name]["seconds"] for m in scored]
    rows = []
    for s in settings:
        have = [m for m in scored if s.name in evals.get(m["id"], {})]
        values = [float(evals[m["id"]][s.name]["value"]) for m in have]
        refs = [float(ref_of[m["id"]]) for m in have]
        seconds = [float(evals[m["id"]][s.name]["seconds"]) for m in have]
        errors = (np.abs(np.asarray(values) - np.asarray(refs)) if s.kind == "fid"
                  else np.asarray([]))
        errors = errors[np.isfinite(errors)]
        rho = spearman(values, refs) if have else math.nan
        rows.append({
            "name": s.name, **asdict(s), "forwards": s.forwards, "n_models": len(have),
            "rho": None if math.isnan(rho) else rho,
            "rho_within_kimg": spearman_within(values, refs, [m["kimg"] for m in have]),
            "fid_abs_error_mean": float(errors.mean()) if errors.size else None,
            "fid_abs_error_max": float(errors.max()) if errors.size else None,
            "median_seconds": statistics.median(seconds) if seconds else None,
            "values": {m["id"]: _finite(v) for m, v in zip(have, values, strict=True)},
        })
    base = next((r["median_seconds"] for r in rows if r["name"] == baseline.name), None)
    for row in rows:
        row["cost_vs_baseline"] = (None if base is None or row["median_seconds"] is None
                                   else row["median_seconds"] / base)
    ref_median = statistics.median(ref_seconds) if ref_seconds else None
    final = cheapest_at(rows, threshold, ("fid",))
    rungs = cheapest_at(rows, threshold, ("fid", "proxy"))
    return {
        "reference": {"name": reference.name, **asdict(reference), "forwards": reference.forwards,
                      "median_seconds": ref_median,
                      "cost_vs_baseline": None if base is None or ref_median is None
                      else ref_median / base},
        "baseline": baseline.name,
        "models": [{**m, "reference_fid": _finite(ref_of[m["id"]])} for m in models],
        "n_models_scored": len(scored),
        "settings": rows,
        "choice": {
            "threshold": threshold,
            "final": None if final is None else final["name"],
            "rungs": None if rungs is None else rungs["name"],
            "proxy_qualifies": any(r["kind"] == "proxy" and r["rho"] is not None
                                   and r["rho"] >= threshold for r in rows),
            "if_null": f"no cheaper setting reaches rho {threshold}: keep {reference.name}",
        },
    }


def parse_settings(images: str, steps: str, baseline: tuple[int, int]) -> list[Setting]:
    """The images x steps grid, plus the quickstart's current setting (the cost yardstick)."""
    grid = {(int(n), int(s)) for n in images.split(",") for s in steps.split(",")}
    grid.add(baseline)
    return [Setting("fid", n, s) for n, s in sorted(grid, key=lambda p: (p[0] * p[1], p))]


# --- Models ------------------------------------------------------------------------------------
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_overrides(work: Path, threads: int) -> list[str]:
    """Quiet runs with no tracker, writing only under ``work`` (extractor and FID caches too)."""
    return ["train.progress=false", f"train.threads={threads}", "tracking.backend=none",
            f"train.out_dir={work}/runs", f"eval.cache_dir={work}/cache"]


def train_run(config: str, sampler: str, kimgs: Sequence[float], seed: int, work: Path,
              threads: int) -> list[dict[str, Any]]:
    """Train one run with ``sampler`` (at its paper's weighting) and keep its EMA weights at
    each of ``kimgs``; returns the model records. An interrupted run resumes exactly."""
    from tsearch.log import quiet
    from tsearch.timesteps import SAMPLERS
    from tsearch.train import train
    from tsearch.train.checkpoint import list_checkpoints, load_checkpoint

    points = sorted(float(k) for k in kimgs)
    total = points[-1]
    run_dir = work / "runs" / sampler
    ckpt_dir = run_dir / "checkpoints"
    cfg = load_config(config, [
        *base_overrides(work, threads), f"timesteps.sampler.name={sampler}",
        f"timesteps.weighting.name={SAMPLERS[sampler].paper_weighting}",
        *RUN_OVERRIDES.get(sampler, []), f"train.seed={seed}", f"train.total_kimg={total}",
        f"eval.every_kimg={total}", f"eval.at_kimg={json.dumps(points[:-1])}"])
    resume = bool(list_checkpoints(ckpt_dir))
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    with quiet():
        result = train(cfg, run_dir=run_dir, resume=resume, evaluate=False,
                       checkpoint_dir=ckpt_dir, keep_checkpoints=len(points) + 1)
    found = list_checkpoints(ckpt_dir)
    if len(found) != len(points):
        raise RuntimeError(f"run {sampler}: {len(found)} checkpoints for {len(points)} points")
    models = []
    (work / "models").mkdir(parents=True, exist_ok=True)
    for kimg, path in zip(points, found, strict=True):
        state = load_checkpoint(path)
        model_id = f"{sampler}@{kimg:g}"
        out = work / "models" / f"{model_id}.pt"
        torch.save({"ema": state["ema"], "images_seen": state["images_seen"]}, out)
        models.append({"id": model_id, "run": sampler, "kimg": kimg,
                       "weighting": cfg.timesteps.weighting.name,
                       "images_seen": int(state["images_seen"]), "path": out.name})
    shutil.rmtree(run_dir, ignore_errors=True)  # only the EMA weights are kept
    _say(f"trained {sampler}: {result.kimg:g} kimg in {result.seconds:.0f} s, "
         f"{len(models)} models")
    return models


def image_shape(cfg: Config) -> tuple[int, int, int]:
    """C, H, W of the images the trainer feeds the model."""
    return resolved_channels(cfg.data), cfg.data.resolution, cfg.data.resolution


def load_ema(cfg: Config, path: Path) -> torch.nn.Module:
    """The EMA network saved by :func:`train_run`, as the trainer's evaluations see it."""
    from tsearch.diffusion.model import build_model
    from tsearch.train.state import select_device

    net = build_model(cfg.model, resolved_channels(cfg.data), cfg.data.resolution,
                      cfg.diffusion.num_timesteps)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["ema"])
    return net.requires_grad_(False).eval().to(select_device(cfg.train.device))


# --- Scorers ---------------------------------------------------------------------------------
class HeldOutLoss:
    """Unweighted denoising MSE on fixed held-out images, noise and stratified timesteps.

    The images come from the split the trainer does not read; timestep k of ``size`` is the
    midpoint of the k-th of ``size`` equal strata of [0, T), paired with images and noise by a
    seeded permutation. Every model sees the same triples, so differences are the model's.
    """

    def __init__(self, cfg: Config, size: int, seed: int, device: torch.device,
                 chunk: int = 1024) -> None:
        from tsearch.data import load_images
        from tsearch.diffusion.schedule import NoiseSchedule
        from tsearch.seeding import derive_seed

        held_out = "test" if cfg.data.split == "train" else "train"
        images = load_images(cfg.data, held_out)
        d = cfg.diffusion
        self.schedule = NoiseSchedule.create(d.schedule, d.num_timesteps, d.variance)
        self.prediction, self.chunk, self.device = d.prediction, chunk, device
        g = torch.Generator().manual_seed(derive_seed(seed, "heldout-loss"))
        order = torch.randperm(images.shape[0], generator=g)
        self.x0 = images[order[torch.arange(size) % images.shape[0]]].to(device)
        T = self.schedule.num_timesteps
        strata = ((torch.arange(size, dtype=torch.float64) + 0.5) * T / size).long()
        self.t = strata[torch.randperm(size, generator=g)].to(device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(device)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        from tsearch.diffusion.loss import per_sample_mse

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for x0, t, noise in zip(self.x0.split(self.chunk), self.t.split(self.chunk),
                                self.noise.split(self.chunk), strict=True):
            losses = per_sample_mse(model, self.schedule, x0, t, noise, self.prediction)
            total += losses.double().sum()
        return float(total / self.x0.shape[0])


def build_scorers(cfg: Config, settings: Sequence[Setting], seed: int
                  ) -> dict[str, Callable[[torch.nn.Module], tuple[float, float]]]:
    """name -> score(model) returning (value, seconds); FID by the trainer's evaluations."""
    from tsearch.diffusion.schedule import NoiseSchedule
    from tsearch.metrics import EvalSetting, build_evaluations
    from tsearch.train.state import autocast_dtype, select_device

    device = select_device(cfg.train.device)
    d = cfg.diffusion
    schedule = NoiseSchedule.create(d.schedule, d.num_timesteps, d.variance)
    setting = EvalSetting(image_shape(cfg), d.prediction, device,
                          autocast_dtype(device, cfg.train.precision))
    scorers: dict[str, Callable[[torch.nn.Module], tuple[float, float]]] = {}
    for s in settings:
        if s.kind == "proxy":
            loss = HeldOutLoss(cfg, s.size, seed, device)

            def score(model: torch.nn.Module, loss: HeldOutLoss = loss) -> tuple[float, float]:
                start = time.perf_counter()
                value = loss(model)
                return value, time.perf_counter() - start
        else:
            eval_cfg = cfg.eval.model_copy(update={"num_images": s.num_images, "steps": s.steps,
                                                   "metrics": ("fid",)})
            evaluations = build_evaluations(eval_cfg, cfg.data, setting)
            evaluations.prepare()  # extractor and reference statistics, outside the timing
            gen_seed = cfg.eval.seed + (REFERENCE_SEED_OFFSET if s.reference else 0)

            def score(model: torch.nn.Module, ev: Any = evaluations,
                      gen_seed: int = gen_seed) -> tuple[float, float]:
                out = ev(model, schedule, gen_seed)
                return out[names.FID], out[names.EVAL_SECONDS]
        scorers[s.name] = score
    return scorers


# --- Report ------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(summary: dict[str, Any]) -> str:
    """The short stdout table: one line per setting, the choices marked."""
    choice = summary["choice"]
    lines = [f"{'setting':<18}{'rho':>7}{'rho@kimg':>10}{'|err| mean':>12}{'max':>8}"
             f"{'s/eval':>9}{'x base':>8}  "]
    for r in summary["settings"]:
        mark = ", ".join(k for k in ("final", "rungs") if choice[k] == r["name"])
        lines.append(f"{r['name']:<18}{_fmt(r['rho'], '.3f'):>7}"
                     f"{_fmt(r['rho_within_kimg'], '.3f'):>10}"
                     f"{_fmt(r['fid_abs_error_mean'], '.2f'):>12}"
                     f"{_fmt(r['fid_abs_error_max'], '.2f'):>8}"
                     f"{_fmt(r['median_seconds'], '.2f'):>9}{_fmt(r['cost_vs_baseline'], '.2f'):>8}"
                     f"  {('<- ' + mark) if mark else ''}")
    ref = summary["reference"]
    lines.append(f"{ref['name']:<18}{'(reference)':>17}{'':>20}"
                 f"{_fmt(ref['median_seconds'], '.2f'):>9}"
                 f"{_fmt(ref['cost_vs_baseline'], '.2f'):>8}")
    lines.append(f"models scored: {summary['n_models_scored']}; rho >= {choice['threshold']}: "
                 f"final {choice['final']}, rungs {choice['rungs']}"
                 + ("" if choice["final"] else f" ({choice['if_null']})"))
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Left: rho vs cost per setting; right: cheap vs reference FID of the chosen setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    for kind, marker in (("fid", "o"), ("proxy", "s")):
        rows = [r for r in summary["settings"] if r["kind"] == kind
                and r["rho"] is not None and r["cost_vs_baseline"] is not None]
        ax.scatter([r["cost_vs_baseline"] for r in rows], [r["rho"] for r in rows],
                   marker=marker, label=kind)
        for r in rows:
            ax.annotate(r["name"].replace("fid-", "").replace("proxy-mse-", "mse "),
                        (r["cost_vs_baseline"], r["rho"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(summary["choice"]["threshold"], color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"seconds per evaluation / {summary['baseline']}'s")
    ax.set_ylabel("Spearman rho vs reference FID ranking")
    ax.set_title("rank agreement vs cost")
    ax.legend(fontsize=8)
    shown = summary["choice"]["final"] or summary["baseline"]
    row = next((r for r in summary["settings"] if r["name"] == shown), None)
    ref = {m["id"]: m["reference_fid"] for m in summary["models"]}
    kimg = {m["id"]: m["kimg"] for m in summary["models"]}
    if row is not None and row["values"]:
        ids = list(row["values"])
        x = np.asarray([ref[i] for i in ids], dtype=np.float64)
        y = np.asarray([row["values"][i] for i in ids], dtype=np.float64)
        sc = bx.scatter(x, y, c=[kimg[i] for i in ids], cmap="viridis")
        fig.colorbar(sc, ax=bx, label="kimg")
        finite = np.concatenate([x, y])[np.isfinite(np.concatenate([x, y]))]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            bx.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
            if lo > 0 and hi / lo > 10:  # bad and good models on one plot
                bx.set_xscale("log")
                bx.set_yscale("log")
    bx.set_xlabel(f"reference FID ({summary['reference']['name']})")
    bx.set_ylabel(f"FID at {shown}")
    bx.set_title(f"{shown} vs reference, one point per model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- Main ----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--quick", action="store_true",
                    help="tiny: 2 short runs (4 models), 3 FID settings, small counts")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every run and seed of the proxy's fixed triples")
    ap.add_argument("--runs", help=f"samplers, one run each (default {FULL['runs']})")
    ap.add_argument("--kimg", help=f"kimg at which models are kept (default {FULL['kimg']})")
    ap.add_argument("--reference", help=f"IMAGESxSTEPS of the reference (default "
                                        f"{FULL['reference']})")
    ap.add_argument("--images", help=f"grid of image counts (default {FULL['images']}; each must "
                                     "exceed the extractor's feature count)")
    ap.add_argument("--steps", help=f"grid of DDIM steps (default {FULL['steps']})")
    ap.add_argument("--proxy-sizes", help=f"held-out loss sizes (default {FULL['proxy_sizes']})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a trial has 1 core)")
    ap.add_argument("--max-minutes", type=float, default=math.inf)
    ap.add_argument("--work", help="EMA weights and finished evaluations (default "
                                   "tsearch-runs/eval_fidelity[-quick])")
    ap.add_argument("--out", help="summary JSON; the PNG goes beside it (default "
                                  "benchmarks/results/eval_fidelity.json)")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + 60 * args.max_minutes
    preset = QUICK if args.quick else FULL
    opts = {k: getattr(args, k) or v for k, v in preset.items()}
    suffix = "-quick" if args.quick else ""
    work = Path(args.work or ROOT / "tsearch-runs" / f"eval_fidelity{suffix}").resolve()
    out = Path(args.out or (work / "eval_fidelity.json" if args.quick else
                            ROOT / "benchmarks" / "results" / "eval_fidelity.json"))
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, base_overrides(work, args.threads))
    ref_n, ref_s = (int(v) for v in opts["reference"].split("x"))
    reference = Setting("fid", ref_n, ref_s, reference=True)
    baseline = Setting("fid", cfg.eval.num_images, cfg.eval.steps)
    grid = parse_settings(opts["images"], opts["steps"], (baseline.num_images, baseline.steps))
    proxies = [Setting("proxy", size=int(n)) for n in opts["proxy_sizes"].split(",")]
    settings = [*grid, *proxies]
    kimgs = [float(k) for k in opts["kimg"].split(",")]

    # Resume the cache; refuse one made with another config, seed or model set.
    cache_path = work / "evals.json"
    cache = _load(cache_path)
    meta = {"config": str(Path(args.config).resolve()), "seed": args.seed, "kimg": kimgs,
            "eval_seed": cfg.eval.seed, "quick": args.quick}
    if cache.get("meta", meta) != meta:
        print(f"error: {cache_path} holds results of another configuration ({cache['meta']}); "
              "pass another --work", file=sys.stderr)
        return 2
    cache.setdefault("meta", meta)
    cache.setdefault("runs", {})
    evals = cache.setdefault("evals", {})

    # Train each run and keep its EMA weights at every kimg point.
    for sampler in opts["runs"].split(","):
        if sampler in cache["runs"] or time.monotonic() > deadline:
            continue
        start = time.perf_counter()
        models = train_run(args.config, sampler, kimgs, args.seed, work, args.threads)
        cache["runs"][sampler] = {"models": models, "seconds": time.perf_counter() - start}
        _save(cache_path, cache)
    models = [m for r in cache["runs"].values() for m in r["models"]]

    # Score every model at the reference, the grid and the proxies; cache each result.
    scorers = build_scorers(cfg, [reference, *settings], args.seed)
    for i, m in enumerate(models, 1):
        done = evals.setdefault(m["id"], {})
        todo = [s for s in (reference, *settings) if s.name not in done]
        if not todo:
            continue
        if time.monotonic() > deadline:
            _say("time limit: stopping before the next model")
            break
        net = load_ema(cfg, work / "models" / m["path"])
        start = time.perf_counter()
        for s in todo:
            value, seconds = scorers[s.name](net)
            done[s.name] = {"value": value, "seconds": seconds}
            _save(cache_path, cache)
        ref = done[reference.name]
        _say(f"[{i}/{len(models)}] {m['id']}: reference FID {ref['value']:.2f} "
             f"({ref['seconds']:.1f} s); {len(todo)} evaluations in "
             f"{time.perf_counter() - start:.0f} s")

    # Summarise, plot and print.
    summary = summarise(models, evals, reference, settings, baseline)
    result = {"benchmark": "eval_fidelity", "config": Path(args.config).name,
              "seed": args.seed, "quick": args.quick, "threads": args.threads,
              "torch": torch.__version__, "machine": f"{platform.machine()}, "
              f"{torch.get_num_threads()} threads", "runs": list(cache["runs"]),
              "kimg": kimgs, "reference_seed": cfg.eval.seed + REFERENCE_SEED_OFFSET,
              "eval_seed": cfg.eval.seed,
              "train_seconds": {k: v["seconds"] for k, v in cache["runs"].items()},
              **summary,
              "command": "python benchmarks/eval_fidelity.py " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, out.with_suffix(".png"))
    print(table(summary))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
