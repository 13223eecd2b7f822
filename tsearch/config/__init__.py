"""Typed configuration for every part of a run, loaded from YAML with dotted overrides.

A leaf: it imports nothing of tsearch but the leaf modules, so importing it loads no torch and
no plugin. Plugin params are typed when a config is validated, by the resolver the caller
passes (``params=tsearch.timesteps.resolve_params``); see :mod:`tsearch.config.components`.
"""

from __future__ import annotations

from tsearch.config.components import (
    ComponentConfig,
    ParamsResolver,
    SamplerConfig,
    TimestepsConfig,
    WeightingConfig,
    validation_context,
)
from tsearch.config.fields import (
    MAX_COUNT,
    MAX_IMAGES,
    MAX_KIMG,
    MAX_OPTUNA_SEED,
    MAX_SEED,
    MAX_WORKERS,
    Kimg,
    Seed,
)
from tsearch.config.loading import load_config, load_resolved, save_resolved
from tsearch.config.overrides import (
    OVERLAY_SECTIONS,
    SECTIONS,
    apply_overlays,
    apply_overrides,
    get_dotted,
    merge_flat,
    merge_overlay,
    parse_override,
    parse_sections,
    set_dotted,
)
from tsearch.config.portable import MACHINE_FIELDS, portable_dict, portable_overlay
from tsearch.config.reader import MAX_CONFIG_BYTES, MAX_YAML_NODES, read_yaml
from tsearch.config.schema import (
    AshaConfig,
    Config,
    ConfirmConfig,
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    ModelConfig,
    MomentumDecayConfig,
    OptimConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
)
from tsearch.config.validation import format_validation_error, validate_config

__all__ = [
    "MACHINE_FIELDS",
    "MAX_CONFIG_BYTES",
    "MAX_COUNT",
    "MAX_IMAGES",
    "MAX_KIMG",
    "MAX_OPTUNA_SEED",
    "MAX_SEED",
    "MAX_WORKERS",
    "MAX_YAML_NODES",
    "OVERLAY_SECTIONS",
    "SECTIONS",
    "AshaConfig",
    "ComponentConfig",
    "Config",
    "ConfirmConfig",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "Kimg",
    "ModelConfig",
    "MomentumDecayConfig",
    "OptimConfig",
    "ParamsResolver",
    "SamplerConfig",
    "SearchConfig",
    "Seed",
    "TimestepsConfig",
    "TrackingConfig",
    "TrainConfig",
    "WeightingConfig",
    "apply_overlays",
    "apply_overrides",
    "format_validation_error",
    "get_dotted",
    "load_config",
    "load_resolved",
    "merge_flat",
    "merge_overlay",
    "parse_override",
    "parse_sections",
    "portable_dict",
    "portable_overlay",
    "read_yaml",
    "save_resolved",
    "set_dotted",
    "validate_config",
    "validation_context",
]
