"""Evaluations of a model during training (FID first), by name, and what FID is made of.

``evaluation`` holds the contract and generation for evaluation, ``registry`` the entries by
name; ``fid``/``extractors``/``reference`` are FID's streaming float64 statistics, feature
extractors and cached reference statistics.
"""

from __future__ import annotations

from tsearch.metrics.evaluation import EvalSetting, Evaluation, Evaluations
from tsearch.metrics.extractors import (
    DigitsExtractor,
    FeatureExtractor,
    InceptionExtractor,
    build_extractor,
)
from tsearch.metrics.fid import FeatureStats, frechet_distance
from tsearch.metrics.reference import compute_fid, precompute_reference, reference_stats
from tsearch.metrics.registry import EVALUATIONS, build_evaluations, check_evaluations

__all__ = [
    "EVALUATIONS",
    "EvalSetting",
    "Evaluation",
    "Evaluations",
    "build_evaluations",
    "check_evaluations",
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
