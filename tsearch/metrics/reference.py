"""FID reference statistics (computed once, cached on disk) and FID of generated images.

As in EDM's ``fid.py``, "compute reference statistics" and "compute FID" are separate steps: the
reference side is the expensive one and is shared by every trial of a search, so it is cached
under ``<eval.cache_dir>/fid-ref/`` keyed by everything that determines it (dataset, split,
resolution, channels, image count, dataset content hash, extractor weights hash). Concurrent trials
never race: one computes under a file lock, the others wait and load its file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tsearch.config import Config, DataConfig, EvalConfig
from tsearch.data import dataset_fingerprint, load_images, resolved_channels
from tsearch.errors import DataError
from tsearch.metrics._cache import load_or_build, short_hash
from tsearch.metrics.extractors import FeatureExtractor, build_extractor
from tsearch.metrics.fid import FeatureStats, frechet_distance


def reference_data_config(data_cfg: DataConfig, eval_cfg: EvalConfig) -> DataConfig:
    """The real images FID compares against: ``eval.ref_split``, first ``eval.ref_images``.

    ``data.limit`` is not applied: the reference is the data distribution, not the training
    subset (both are prefixes of the same seeded order, so they coincide when the sizes match).
    """
    fields = data_cfg.model_dump()
    fields.update(split=eval_cfg.ref_split, limit=eval_cfg.ref_images)
    return DataConfig.model_validate(fields)


def _reference(
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    extractor: FeatureExtractor,
    device: torch.device | str,
) -> tuple[Path, FeatureStats]:
    ref_cfg = reference_data_config(data_cfg, eval_cfg)
    images = load_images(ref_cfg)
    n = int(images.shape[0])
    key: dict[str, Any] = {
        "dataset": ref_cfg.name,
        "split": ref_cfg.split,
        "resolution": ref_cfg.resolution,
        "channels": resolved_channels(ref_cfg),
        "n": n,
        "data_fingerprint": dataset_fingerprint(ref_cfg, ref_cfg.split),
        "extractor": extractor.name,
        "extractor_fingerprint": extractor.fingerprint,
    }
    stem = (
        f"{key['dataset']}-{key['split']}-{key['resolution']}px-{key['channels']}ch-n{n}-"
        f"{extractor.name}-{short_hash(key)}"
    )
    path = Path(eval_cfg.cache_dir).expanduser() / "fid-ref" / f"{stem}.npz"

    def load(p: Path) -> FeatureStats | None:
        try:
            stats = FeatureStats.load(p)
        except DataError:
            return None  # unreadable: recompute
        ok = stats.metadata.get("key") == key and stats.count == n
        return stats if ok else None

    def compute_and_save() -> FeatureStats:
        stats = FeatureStats(metadata={"key": key})
        for chunk in images.split(eval_cfg.batch_size):
            stats.update(extractor(chunk.to(device)))
        stats.save(path)
        return stats

    try:
        stats, _ = load_or_build(path, load, compute_and_save)
    except OSError as exc:
        raise DataError(
            f"cannot write FID reference statistics to {str(path)!r} ({exc.strerror or exc}); "
            "set eval.cache_dir to a writable directory"
        ) from None
    return path, stats


def reference_stats(
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    extractor: FeatureExtractor,
    device: torch.device | str = "cpu",
) -> FeatureStats:
    """Feature statistics of the real reference images, from the cache or computed once."""
    return _reference(data_cfg, eval_cfg, extractor, device)[1]


def compute_fid(
    images: torch.Tensor | Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    ref: FeatureStats,
    batch_size: int = 500,
) -> float:
    """FID of ``images`` (a tensor, or an iterable of batches) against ``ref``, streaming.

    Returns NaN when a feature is not finite (e.g. images of a diverged model), so a search
    records a failed evaluation instead of crashing.
    """
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    stats = FeatureStats(dim=extractor.dim)
    for batch in batches:
        stats.update(extractor(batch))
    if ref.dim != stats.dim:
        raise ValueError(f"reference statistics have dim {ref.dim}, extractor gives {stats.dim}")
    if not stats.is_finite():
        return math.nan
    return frechet_distance(stats.mean(), stats.cov(), ref.mean(), ref.cov())


def _default_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def precompute_reference(cfg: Config) -> tuple[Path, FeatureStats]:
    """For ``tsearch fid-ref``: build the extractor and the reference statistics of ``cfg``.

    Returns the cache file's path and the statistics (already cached: nothing is recomputed).
    """
    device = _default_device(cfg)
    extractor = build_extractor(cfg.eval, cfg.data, device)
    return _reference(cfg.data, cfg.eval, extractor, device)
