"""FID of generated images against cached reference statistics: the search metric.

Images are generated with per-image seeds from the EMA network; the extractor and the reference
statistics are built once (cached on disk across runs and shared by concurrent trials; see
``tsearch.metrics.reference``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tsearch import names
from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.metrics.evaluation import Evaluation, generate_for_eval


class FIDEvaluation(Evaluation):
    name = "fid"
    provides = (names.FID, names.EVAL_GENERATE_SECONDS, names.EVAL_SECONDS)
    headline = names.FID
    label = "FID"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extractor = None
        self._ref = None

    def prepare(self) -> None:
        if self._ref is None:
            from tsearch.metrics.extractors import build_extractor
            from tsearch.metrics.reference import reference_stats

            self._extractor = build_extractor(self.eval_cfg, self.data_cfg, self.setting.device)
            self._ref = reference_stats(self.data_cfg, self.eval_cfg, self._extractor,
                                        self.setting.device)

    def tags(self) -> dict[str, str]:
        self.prepare()
        return {names.TAG_EVAL_BACKEND: f"{self._extractor.name}:{self._extractor.fingerprint}"}

    def __call__(self, model: torch.nn.Module, schedule: NoiseSchedule,
                 seed: int) -> dict[str, float]:
        from tsearch.metrics.reference import compute_fid

        self.prepare()
        start = time.perf_counter()
        images = generate_for_eval(model, schedule, seed, self.eval_cfg, self.setting)
        gen_seconds = time.perf_counter() - start
        self.last_images = images[: names.GRID_IMAGES]
        fid = compute_fid(images.to(self.setting.device), self._extractor, self._ref,
                          batch_size=self.eval_cfg.batch_size)
        return {
            names.FID: float(fid),
            names.EVAL_GENERATE_SECONDS: gen_seconds,
            names.EVAL_SECONDS: time.perf_counter() - start,
        }
