"""Typed configuration for every part of a run, loaded from YAML with dotted overrides.

Every section is a frozen pydantic model with ``extra="forbid"`` so that a typo is an error, not
a silently ignored key. Sampler and weighting hyperparameters are parsed into the plugin's own
typed ``Params`` model here, once, when the config is validated: nothing downstream re-validates
a dict. This module must not import the plugins (imports flow downward), so the plugin registry
hands its parser in (:func:`register_params_parser`; ``tsearch.timesteps.registry`` does so when
``tsearch`` is imported).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from tsearch import names
from tsearch.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    # digits ships inside scikit-learn; the torchvision sets and folder read from `root`.
    name: Literal["digits", "cifar10", "mnist", "fashion_mnist", "folder"] = "digits"
    root: str | None = None  # directory holding the dataset files (never downloaded)
    resolution: int = Field(16, ge=4, le=1024)  # square side in pixels after resizing
    channels: Literal[1, 3] | None = None  # None: the dataset's own channel count
    split: Literal["train", "test"] = "train"
    limit: int | None = Field(None, ge=1)  # use only the first N images (after a seeded shuffle)


class ModelConfig(_Section):
    arch: Literal["unet", "dit"] = "unet"
    # UNet2DModel: one entry per resolution level.
    channels: tuple[int, ...] = Field((32, 64, 64), min_length=1, max_length=6)
    attention: tuple[bool, ...] = (False, False, True)  # self-attention per level
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # DiTTransformer2DModel.
    patch_size: int = Field(2, ge=1)
    dit_layers: int = Field(4, ge=1)
    dit_heads: int = Field(4, ge=1)
    dit_head_dim: int = Field(32, ge=8)

    @model_validator(mode="after")
    def _levels_match(self) -> ModelConfig:
        if self.arch == "unet":
            if len(self.attention) != len(self.channels):
                raise ValueError(
                    f"model.attention has {len(self.attention)} entries but model.channels has "
                    f"{len(self.channels)}; give one flag per level"
                )
            bad = [c for c in self.channels if c % self.norm_groups]
            if bad:
                raise ValueError(
                    f"model.channels {list(self.channels)} must all be divisible by "
                    f"model.norm_groups={self.norm_groups}"
                )
        return self


class DiffusionConfig(_Section):
    schedule: Literal["linear", "quad", "cosine"] = "linear"
    num_timesteps: int = Field(1000, ge=2, le=100_000)
    prediction: Literal["eps", "v", "x0"] = "eps"  # what the network outputs
    variance: Literal["fixed_large", "fixed_small"] = "fixed_large"  # for VLB terms and DDPM


# kind ("sampler", "weighting") -> parser(name, raw params) -> the plugin's typed Params model,
# raising ConfigError with the field's path. Filled by the plugin registry.
ParamsParser = Callable[[str, Any], BaseModel]
_PARAMS_PARSERS: dict[str, ParamsParser] = {}


def register_params_parser(kind: str, parser: ParamsParser) -> None:
    """Let the ``kind`` plugin registry type the ``params`` of its config sections."""
    _PARAMS_PARSERS[kind] = parser


class ComponentConfig(_Section):
    """A registered plugin by name plus its hyperparameters, typed by the plugin's ``Params``.

    YAML and JSON give ``params`` as a mapping; after validation it is the plugin's ``Params``
    instance. It is written back out with only the values that were given, so that a config
    whose sampler is changed by an override (or a search) carries no other sampler's fields.
    """

    kind: ClassVar[str]
    name: str
    params: Any = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        parser = _PARAMS_PARSERS.get(cls.kind)
        if parser is None:  # a bug, not a user error: the registry was not imported
            raise RuntimeError(f"no {cls.kind} registry: import tsearch before tsearch.config")
        data = dict(data)
        name = data.get("name", cls.model_fields["name"].default)
        if isinstance(name, str):
            data["params"] = parser(name, data.get("params") or {})
        return data

    @field_serializer("params")
    def _given_params(self, params: Any) -> Any:
        if isinstance(params, BaseModel):
            return params.model_dump(mode="json", exclude_unset=True)
        return params


class SamplerConfig(ComponentConfig):
    kind: ClassVar[str] = "sampler"
    name: str = "uniform"  # a key of tsearch.timesteps.SAMPLERS


class WeightingConfig(ComponentConfig):
    kind: ClassVar[str] = "weighting"
    name: str = "none"  # a key of tsearch.timesteps.WEIGHTINGS


class TimestepsConfig(_Section):
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)


class MomentumDecayConfig(_Section):
    """Decay of Adam's beta1 over training (CLTS paper's momentum decay; ALGORITHMS 3.3)."""

    enabled: bool = False
    end: float = Field(0.5, ge=0.0, lt=1.0)  # beta1 reached at the end of the decay
    kimg: float = Field(10.0, gt=0.0)  # length of the decay in kimg; beta1 stays at `end` after
    shape: Literal["linear", "exponential"] = "linear"
    lr_compensation: Literal["none", "heavy_ball"] = "none"  # lr * (1-b1_t)/(1-b1_0)


class OptimConfig(_Section):
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)  # max global grad norm; null disables
    warmup_kimg: float = Field(0.0, ge=0.0)  # linear learning-rate warm-up
    momentum_decay: MomentumDecayConfig = MomentumDecayConfig()


class TrainConfig(_Section):
    total_kimg: float = Field(20.0, gt=0.0)  # training length in thousands of images
    batch_size: int = Field(64, ge=1, le=65536)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # with warm-up min(d, (1+n)/(10+n))
    seed: int = Field(0, ge=0)  # data order, noise and timestep generators derive from it
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA only
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; null: torch's default
    log_every_kimg: float = Field(0.5, gt=0.0)
    out_dir: str = "tsearch-runs/train"  # one sub-directory per run
    progress: bool = True  # progress bar on stderr


class EvalConfig(_Section):
    # Keys of tsearch.metrics.registry.EVALUATIONS run at each evaluation point, in order.
    metrics: tuple[str, ...] = Field(("fid",), min_length=1)
    every_kimg: float = Field(5.0, gt=0.0)  # FID (and a checkpoint) every N kimg and at the end
    num_images: int = Field(1000, ge=2)  # generated images per FID
    ref_images: int | None = Field(None, ge=2)  # reference images; null: the whole split
    ref_split: Literal["train", "test"] = "train"
    method: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(50, ge=1)  # generation steps (DDIM: a subsequence of the T steps)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # DDIM stochasticity
    batch_size: int = Field(500, ge=1)
    extractor: Literal["auto", "digits", "inception"] = "auto"  # auto: digits for digits
    inception_weights: str | None = None  # pt_inception-2015-12-05 .pth; or env var
    seed: int = Field(2024, ge=0)  # per-image generation seeds start here
    cache_dir: str = "tsearch-runs/cache"  # extractor weights and reference statistics
    at_start: bool = False  # also evaluate the untrained model at kimg 0


class TrackingConfig(_Section):
    backend: Literal["mlflow", "none"] = "mlflow"
    uri: str = "sqlite:///tsearch-runs/mlflow.db"  # relative sqlite paths resolve against cwd
    # Used when the experiment is created; None: the tracking server's own artifact store.
    artifact_root: str | None = "tsearch-runs/artifacts"
    experiment: str = "tsearch"
    run_name: str | None = None


class AshaConfig(_Section):
    """ASHA early stopping on FID; times in kimg (ASHA's time_attr)."""

    enabled: bool = True
    grace_kimg: float = Field(2.0, gt=0.0)  # a trial runs at least this long
    reduction_factor: float = Field(3.0, gt=1.0)  # keep the best 1/rf at each rung
    brackets: int = Field(1, ge=1)


class SearchConfig(_Section):
    """How `tsearch search` explores: ignored by `tsearch train`."""

    name: str | None = None  # experiment name (Ray run dir, Optuna study, MLflow parent run)
    # A key of tsearch.search.algorithms.ALGORITHMS: Optuna's TPE or random sampler, or every
    # cell of the space once (grid); checked against the registry before anything starts.
    algorithm: str = "tpe"
    num_samples: int = Field(10, ge=1)  # trials (a grid runs each of its cells once instead)
    max_concurrent: int = Field(2, ge=1)
    seed: int = Field(0, ge=0)  # TPE seed
    tpe_startup_trials: int = Field(5, ge=1)  # random trials before TPE models the results
    metric: Literal["eval/fid"] = names.FID
    mode: Literal["min"] = "min"
    asha: AshaConfig = AshaConfig()
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)  # fractional: 0.5 = two trials per GPU
    storage_path: str = "tsearch-runs/ray"  # trial checkpoints; shared storage on a cluster
    max_failures: int = Field(1, ge=0)  # retries of a failed trial, from its last checkpoint
    num_to_keep: int = Field(2, ge=1)  # checkpoints kept per trial
    # Dotted config key -> distribution, e.g. {"optim.lr": {"float": [1e-4, 1e-2], "log": true}}
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)  # tried first


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    timesteps: TimestepsConfig = Field(default_factory=TimestepsConfig)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        res = self.data.resolution
        if self.model.arch == "unet":
            factor = 2 ** (len(self.model.channels) - 1)
            if res % factor:
                raise ValueError(
                    f"data.resolution={res} must be divisible by {factor} for a UNet with "
                    f"{len(self.model.channels)} levels (change data.resolution or model.channels)"
                )
        elif res % self.model.patch_size:
            raise ValueError(
                f"data.resolution={res} must be divisible by model.patch_size="
                f"{self.model.patch_size}"
            )
        if self.data.name in ("cifar10", "mnist", "fashion_mnist", "folder") and not self.data.root:
            raise ValueError(
                f"data.root is required for data.name={self.data.name!r}: give the local "
                "directory holding the files (nothing is downloaded)"
            )
        if self.eval.method == "ddim" and self.eval.steps > self.diffusion.num_timesteps:
            raise ValueError(
                f"eval.steps={self.eval.steps} exceeds diffusion.num_timesteps="
                f"{self.diffusion.num_timesteps}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict that ``Config.model_validate`` accepts back unchanged."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML so ``5``, ``true``, ``[1,2]`` work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.total_kimg=5)")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part (e.g. train.total_kimg=5)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted override set (missing levels are created)."""
    out = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        parts, value = parse_override(item)
        if parts[:2] == ["search", "space"] and len(parts) > 3:
            # Space keys are dotted config paths themselves: search.space.optim.lr={...}
            parts = ["search", "space", ".".join(parts[2:])]
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _allowed_keys(loc: Sequence[Any]) -> list[str] | None:
    """Field names of the model that owns ``loc[-1]``, for 'unknown key' messages."""
    cls: Any = Config
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        cls = field.annotation
    fields = getattr(cls, "model_fields", None)
    return sorted(fields) if fields else None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line for the first problem: path, offending value, what is allowed."""
    err = exc.errors()[0]
    path = prefix + ".".join(str(p) for p in err["loc"])
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"]) if not prefix else None
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config error: unknown key {path!r}{hint}{more}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "value_error" and not err["loc"]:
        return f"config error: {msg}{more}"
    value = err.get("input")
    shown = "missing" if err["type"] == "missing" else repr(value)
    if isinstance(value, dict) and err["type"] not in ("missing",):
        shown = "{...}"
    return f"config error: {path or '<root>'} = {shown}: {msg}{more}"


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Build a Config, turning pydantic's multi-line report into one ConfigError line."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"config error: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (give a path to a YAML file)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- environment <- YAML file (if any) <- dotted overrides, validated.

    ``MLFLOW_TRACKING_URI`` (MLflow's own convention) and ``TSEARCH_STORAGE_PATH`` fill
    ``tracking.uri`` and ``search.storage_path`` when neither the file nor an override sets them,
    so one environment (e.g. a cluster's) points every command at the same server and storage.
    """
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    for env, section, key in (("MLFLOW_TRACKING_URI", "tracking", "uri"),
                              ("TSEARCH_STORAGE_PATH", "search", "storage_path")):
        value = os.environ.get(env, "").strip()
        if value and isinstance(raw.get(section, {}), dict) and key not in raw.get(section, {}):
            raw.setdefault(section, {})[key] = value
    return validate_config(raw)


def save_resolved(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (every default spelled out) next to a run's results."""
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_resolved(path: str | Path) -> Config:
    """Read a ``config.json`` written by :func:`save_resolved`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{str(p)!r} not found: expected a run directory's config.json")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{str(p)!r} is not valid JSON (corrupt run directory?)") from None
    return validate_config(raw)
