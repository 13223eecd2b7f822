"""The evaluation contract: what the trainer runs at an evaluation point, by name.

An :class:`Evaluation` gets the EMA model, the noise schedule and a seed, and returns named
metrics; the trainer decides *when* to evaluate and logs what comes back, and knows nothing of
FID. Entries are built from the ``eval`` and ``data`` config sections and an
:class:`EvalSetting` (what the trainer knows: image shape, device, precision, prediction type).
Adding an evaluation is one file with an :class:`Evaluation` subclass plus one line in
``tsearch.metrics.registry.EVALUATIONS``; ``eval.metrics`` selects entries, and the conformance
test runs every one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from tsearch.config import DataConfig, EvalConfig
from tsearch.diffusion.generate import generate_images
from tsearch.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True)
class EvalSetting:
    """What an evaluation needs to know about the model it is handed."""

    image_shape: tuple[int, int, int]  # C, H, W
    prediction: str  # what the network outputs: eps | v | x0
    device: torch.device
    autocast_dtype: torch.dtype | None = None


class Evaluation(ABC):
    """A measurement of a model at one point of training.

    ``provides`` lists the metric keys a call returns (a search checks that its metric is among
    them before it starts); ``headline`` is the one shown on the progress line. ``prepare`` does
    the one-time work (reference statistics, extractor weights) before training starts, so that
    a missing file fails before any compute is spent. Evaluations must not change the model or
    any global RNG: two trials evaluated with the same seed are judged on the same latents.
    """

    name: ClassVar[str]
    provides: ClassVar[tuple[str, ...]]
    headline: ClassVar[str | None] = None
    label: ClassVar[str] = ""  # short name for the progress line

    def __init__(self, eval_cfg: EvalConfig, data_cfg: DataConfig, setting: EvalSetting):
        self.eval_cfg = eval_cfg
        self.data_cfg = data_cfg
        self.setting = setting
        # Generated images of the last call, if it made any (first per-image seeds first): the
        # run's sample grid is cut from them, so a grid costs no extra generation.
        self.last_images: torch.Tensor | None = None

    def prepare(self) -> None:  # noqa: B027 (optional hook)
        """Build what every call needs (cached across runs where possible)."""

    def tags(self) -> dict[str, str]:
        """Run tags that say how the numbers were made (extractor, weights fingerprint)."""
        return {}

    @abstractmethod
    def __call__(self, model: torch.nn.Module, schedule: NoiseSchedule,
                 seed: int) -> dict[str, float]:
        """Named metrics of ``model`` (slash-namespaced keys, e.g. ``eval/fid``)."""


def generate_for_eval(model: torch.nn.Module, schedule: NoiseSchedule, seed: int,
                      eval_cfg: EvalConfig, setting: EvalSetting) -> torch.Tensor:
    """``eval.num_images`` images by the configured method and steps, per-image seeds from seed."""
    return generate_images(
        model, schedule, eval_cfg.num_images, setting.image_shape, method=eval_cfg.method,
        steps=eval_cfg.steps, eta=eval_cfg.eta, prediction=setting.prediction, seed=seed,
        batch_size=eval_cfg.batch_size, device=setting.device,
        autocast_dtype=setting.autocast_dtype)


class Evaluations:
    """The evaluations ``eval.metrics`` names, run in order at each evaluation point."""

    def __init__(self, entries: Sequence[Evaluation]):
        self.entries = list(entries)

    def prepare(self) -> dict[str, str]:
        """Prepare every entry; returns the run tags they contribute."""
        tags: dict[str, str] = {}
        for entry in self.entries:
            entry.prepare()
            tags.update(entry.tags())
        return tags

    def __call__(self, model: torch.nn.Module, schedule: NoiseSchedule,
                 seed: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for entry in self.entries:
            out.update(entry(model, schedule, seed))
        return out

    def last_images(self) -> torch.Tensor | None:
        """The first entry's generated images of the last call (None if no entry generates)."""
        return next((e.last_images for e in self.entries if e.last_images is not None), None)

    def headline(self, metrics: dict[str, float]) -> tuple[str, float] | None:
        """(label, value) of the first entry's headline metric, for the progress line."""
        for entry in self.entries:
            if entry.headline is not None and entry.headline in metrics:
                return entry.label or entry.headline, metrics[entry.headline]
        return None
