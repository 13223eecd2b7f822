"""FID: streaming float64 statistics, feature extractors, cached reference statistics."""

from __future__ import annotations

from tsearch.metrics.extractors import (
    DigitsExtractor,
    FeatureExtractor,
    InceptionExtractor,
    build_extractor,
)
from tsearch.metrics.fid import FeatureStats, frechet_distance
from tsearch.metrics.reference import compute_fid, precompute_reference, reference_stats

__all__ = [
    "DigitsExtractor",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionExtractor",
    "build_extractor",
    "compute_fid",
    "frechet_distance",
    "precompute_reference",
    "reference_stats",
]
