"""Datasets by name -> tensors in [-1, 1]; an infinite seeded loader (docs/design.md section 2)."""

from __future__ import annotations

from tsearch.data.datasets import (
    NATIVE_CHANNELS,
    SPLITS,
    dataset_fingerprint,
    load_images,
    load_labels,
    resolved_channels,
)
from tsearch.data.loader import InfiniteLoader

__all__ = [
    "NATIVE_CHANNELS",
    "SPLITS",
    "InfiniteLoader",
    "dataset_fingerprint",
    "load_images",
    "load_labels",
    "resolved_channels",
]
