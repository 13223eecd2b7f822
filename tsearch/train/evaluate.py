"""FID evaluation of the EMA network: fixed per-image seeds, cached reference statistics."""

from __future__ import annotations

import time

import torch

from tsearch.config import Config
from tsearch.diffusion.generate import generate_images
from tsearch.diffusion.schedule import NoiseSchedule


class Evaluator:
    """Generates ``eval.num_images`` images and computes FID against the reference split.

    The extractor and the reference statistics are built on first use (they are cached on disk
    across runs and shared by concurrent trials; see ``tsearch.metrics.reference``).
    """

    def __init__(self, cfg: Config, schedule: NoiseSchedule, image_shape: tuple[int, int, int],
                 device: torch.device, autocast_dtype: torch.dtype | None = None):
        self.cfg = cfg
        self.schedule = schedule
        self.image_shape = image_shape
        self.device = device
        self.autocast_dtype = autocast_dtype
        self._extractor = None
        self._ref = None

    def prepare(self) -> None:
        """Build the extractor and reference statistics now (before training starts)."""
        if self._ref is None:
            from tsearch.metrics import build_extractor, reference_stats

            self._extractor = build_extractor(self.cfg.eval, self.cfg.data, self.device)
            self._ref = reference_stats(self.cfg.data, self.cfg.eval, self._extractor,
                                        self.device)

    @property
    def extractor_name(self) -> str:
        self.prepare()
        return f"{self._extractor.name}:{self._extractor.fingerprint}"

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from tsearch.metrics import compute_fid

        self.prepare()
        ev = self.cfg.eval
        start = time.perf_counter()
        images = generate_images(
            model, self.schedule, ev.num_images, self.image_shape,
            method=ev.method, steps=ev.steps, eta=ev.eta,
            prediction=self.cfg.diffusion.prediction, seed=ev.seed,
            batch_size=ev.batch_size, device=self.device, autocast_dtype=self.autocast_dtype,
        )
        gen_seconds = time.perf_counter() - start
        fid = compute_fid(images.to(self.device), self._extractor, self._ref,
                          batch_size=ev.batch_size)
        return {
            "eval/fid": float(fid),
            "eval/generate_seconds": gen_seconds,
            "eval/seconds": time.perf_counter() - start,
        }
