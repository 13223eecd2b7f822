"""Everything a training run builds from its config, and everything a checkpoint holds.

:class:`TrainState` owns the model, EMA, optimizer, timestep sampler, data loader, generators,
counters and the histories logged so far; :meth:`TrainState.state_dict` is the one place that
says what a checkpoint contains, so a resume continues with the same next losses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsearch import names
from tsearch.config import Config
from tsearch.data import InfiniteLoader, load_images
from tsearch.diffusion.model import build_model
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.errors import CheckpointError, ConfigError
from tsearch.seeding import derive_seed
from tsearch.timesteps import LossWeighting, TimestepSampler, build_sampler, build_weighting
from tsearch.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from tsearch.train.history import TimestepHistory
from tsearch.train.optim import build_optimizer
from tsearch.train.probe import ProbeRunner


def select_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config error: train.device = 'cuda' but no CUDA device is "
                              "visible; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA (unless fp32 is asked for); full precision on the CPU."""
    return torch.bfloat16 if device.type == "cuda" and precision in ("auto", "bf16") else None


def autocast_for(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class TrainState:
    """A run in progress: :meth:`state_dict` holds the model, EMA, optimizer, sampler, loader,
    generators, counters and histories; the rest (config, device, schedule, weighting, image
    shape, autocast) is rebuilt from the config on resume. The p(t) history keeps the layout
    of earlier checkpoints (``pt_kimg``/``pt_probs``), so they still resume."""

    cfg: Config
    device: torch.device
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: TimestepSampler
    weighting: LossWeighting
    loader: InfiniteLoader
    noise_gen: torch.Generator
    probe: ProbeRunner
    autocast: Callable[[], AbstractContextManager]
    step: int = 0
    images_seen: int = 0
    probe_forwards: int = 0
    evals: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (kimg, metrics)
    pt_history: TimestepHistory = field(default_factory=TimestepHistory)
    wt_history: TimestepHistory = field(default_factory=TimestepHistory)  # learned w(t)

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
            "loader": self.loader.state_dict(), "noise_gen": self.noise_gen.get_state(),
            "probe_gen": self.probe.generator.get_state(), "step": self.step,
            "images_seen": self.images_seen, "probe_forwards": self.probe_forwards,
            "evals": [[k, dict(m)] for k, m in self.evals],
            "pt_kimg": [float(k) for k in self.pt_history.kimgs],
            "pt_probs": [torch.as_tensor(p) for p in self.pt_history.matrix],
            "weighting": self.weighting.state_dict(),  # a learned weighting's parameters
            "wt_kimg": [float(k) for k in self.wt_history.kimgs],
            "wt_rows": [torch.as_tensor(w) for w in self.wt_history.matrix],
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{source} does not match the config's model "
                                  f"({str(exc).splitlines()[0][:100]})") from None
        self.sampler.load_state_dict(state["sampler"])
        self.weighting.load_state_dict(state.get("weighting", {}))  # absent before issue 16
        self.loader.load_state_dict(state["loader"])
        self.noise_gen.set_state(state["noise_gen"])
        self.probe.generator.set_state(state["probe_gen"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.probe_forwards = int(state["probe_forwards"])
        if "evals" in state:
            self.evals = [(float(k), dict(m)) for k, m in state["evals"]]
        else:  # checkpoints written before evaluations were plug-ins held FID only
            self.evals = [(float(k), {names.FID: float(f)}) for k, f in state["fid_history"]]
        self.pt_history = TimestepHistory()
        for kimg, p in zip(state["pt_kimg"], state["pt_probs"], strict=True):
            self.pt_history.append(kimg, np.asarray(p))
        self.wt_history = TimestepHistory()
        for kimg, w in zip(state.get("wt_kimg", []), state.get("wt_rows", []), strict=True):
            self.wt_history.append(kimg, np.asarray(w))

    def save(self, ckpt_dir: Path, keep: int = 2) -> Path:
        return save_checkpoint(self.state_dict(), ckpt_dir, self.images_seen, keep=keep)

    def resume(self, ckpt_dir: Path, warn: Callable[[str], None] | None = None) -> Path:
        """Load the newest readable checkpoint in ``ckpt_dir``.

        A corrupt newest file (a crash mid-write on a filesystem without atomic rename, a full
        disk) is renamed ``*.corrupt`` with a warning and the previous one is used: it would
        otherwise count as the newest when old checkpoints are pruned.
        """
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise CheckpointError(f"no checkpoint in {str(ckpt_dir)!r} to resume from")
        for i, path in enumerate(reversed(found)):
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                if i == len(found) - 1:
                    raise
                aside = path.with_name(path.name + ".corrupt")
                path.replace(aside)
                if warn is not None:
                    warn(f"warning: skipping {exc} (kept as {aside.name})".replace(
                        "; delete it to resume from the previous one", ""))
                continue
            self.load_state_dict(state, source=f"checkpoint {str(path)!r}")
            return path
        raise AssertionError("unreachable")

def build_state(cfg: Config, sampler: TimestepSampler | None = None) -> TrainState:
    """Data, schedule, model, EMA, optimizer, sampler, weighting and generators of a new run.

    Separate generators (derived from ``train.seed``) for data order, noise, timesteps and
    probes: two runs that differ only in sampler see the same data and noise.
    """
    tc = cfg.train
    device = select_device(tc.device)
    images = load_images(cfg.data)
    image_shape = tuple(images.shape[1:])
    loader = InfiniteLoader(images, tc.batch_size, derive_seed(tc.seed, "data"), device=device)
    d = cfg.diffusion
    schedule = NoiseSchedule.create(d.schedule, d.num_timesteps, d.variance)
    torch.manual_seed(derive_seed(tc.seed, "init"))  # diffusers initialises from the global RNG
    model = build_model(cfg.model, image_shape[0], cfg.data.resolution, schedule.num_timesteps)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    sampler = sampler or build_sampler(cfg.timesteps.sampler, schedule,
                                       derive_seed(tc.seed, "timesteps"))
    noise_gen = torch.Generator(device=device).manual_seed(derive_seed(tc.seed, "noise"))
    probe_gen = torch.Generator(device=device).manual_seed(derive_seed(tc.seed, "probe"))
    autocast = autocast_for(device, tc.precision)
    weighting = build_weighting(cfg.timesteps.weighting, schedule, d.prediction).to(device)
    groups = [{"params": list(model.parameters())}]
    if weighting.parameters():  # a learned weighting trains with the model, without decay
        groups.append({"params": weighting.parameters(), "weight_decay": 0.0})
    return TrainState(
        cfg=cfg, device=device, schedule=schedule, image_shape=image_shape, model=model,
        ema=ema, optimizer=build_optimizer(groups, cfg.optim), sampler=sampler,
        weighting=weighting,
        loader=loader, noise_gen=noise_gen, autocast=autocast,
        probe=ProbeRunner(model, schedule, d.prediction, probe_gen, autocast,
                          chunk=max(4 * tc.batch_size, 256)))

