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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tsearch import names
from tsearch.errors import ConfigError

# Bounds that keep a typo from crashing later or running forever. Every float field is finite
# (``allow_inf_nan=False`` on every section); these cap the rest.
MAX_KIMG = 1e6  # 10^9 training images: far beyond any run, yet 1e300 would train forever
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
MAX_OPTUNA_SEED = 2**32 - 1  # Optuna's samplers seed numpy's RandomState (32-bit)
MAX_IMAGES = 10_000_000  # images generated or read per evaluation (FID uses 10k-50k)
MAX_COUNT = 1_000_000  # trials, retries, kept checkpoints and similar counts
MAX_WORKERS = 4096  # CPUs or GPUs per trial, threads, concurrent trials


def _kimg_bound(value: float) -> float:
    if value > MAX_KIMG:
        raise ValueError(f"must be at most {MAX_KIMG:.0e} kimg (10^9 images); give the length "
                         "in thousands of training images")
    return value


# A length of training in kimg: finite and at most MAX_KIMG.
Kimg = Annotated[float, AfterValidator(_kimg_bound)]
# A seed for torch generators; per-image seeds count up from eval.seed (see Config checks).
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def _safe_name(value: str | None) -> str | None:
    problem = None if value is None else names.name_problem(value)
    if problem is not None:
        raise ValueError(f"{problem} (it names a directory)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    # digits ships inside scikit-learn; the torchvision sets and folder read from `root`.
    name: Literal["digits", "cifar10", "mnist", "fashion_mnist", "folder"] = "digits"
    root: str | None = None  # directory holding the dataset files (never downloaded)
    resolution: int = Field(16, ge=4, le=1024)  # square side in pixels after resizing
    channels: Literal[1, 3] | None = None  # None: the dataset's own channel count
    split: Literal["train", "test"] = "train"
    # Use only the first N images (after a seeded shuffle).
    limit: int | None = Field(None, ge=1, le=10**9)


class ModelConfig(_Section):
    arch: Literal["unet", "dit"] = "unet"
    # UNet2DModel: one entry per resolution level.
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (32, 64, 64), min_length=1, max_length=6)
    attention: tuple[bool, ...] = Field((False, False, True), max_length=6)  # per level
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_groups: int = Field(8, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # DiTTransformer2DModel.
    patch_size: int = Field(2, ge=1, le=1024)
    dit_layers: int = Field(4, ge=1, le=128)
    dit_heads: int = Field(4, ge=1, le=128)
    dit_head_dim: int = Field(32, ge=8, le=1024)

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
    # vp: DDPM's variance-preserving process; flow: rectified flow, x_t = (1 - t) x0 + t eps,
    # velocity target (its schedule is "flow" and its prediction "v": set by default).
    process: Literal["vp", "flow"] = "vp"
    schedule: Literal["linear", "quad", "cosine", "flow"] = "linear"
    num_timesteps: int = Field(1000, ge=2, le=100_000)
    prediction: Literal["eps", "v", "x0"] = "eps"  # what the network outputs
    variance: Literal["fixed_large", "fixed_small"] = "fixed_large"  # for VLB terms and DDPM

    @model_validator(mode="before")
    @classmethod
    def _flow_defaults(cls, data: Any) -> Any:
        """process: flow brings its own schedule and the velocity target unless they are given;
        a given one that contradicts it is refused, never silently replaced."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        process, schedule = data.get("process"), data.get("schedule")
        if process is None and schedule == "flow":
            data["process"] = process = "flow"
        if process == "flow":
            if schedule not in (None, "flow"):
                raise ValueError(
                    f"diffusion.process = flow has its own noise levels (SNR = ((1-t)/t)^2), "
                    f"but diffusion.schedule = {schedule}: remove diffusion.schedule or set it "
                    "to flow")
            if data.get("prediction") not in (None, "v"):
                raise ValueError(
                    f"diffusion.process = flow trains the velocity eps - x0, but "
                    f"diffusion.prediction = {data['prediction']}: remove it or set it to v")
            data.update(schedule="flow", prediction="v")
        elif schedule == "flow":
            raise ValueError("diffusion.schedule = flow is the flow-matching process's: set "
                             "diffusion.process: flow, or choose linear, quad or cosine")
        return data


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
    """Decay of Adam's beta1 over training (CLTS paper's momentum decay; ALGORITHMS 3.3).

    Formulas in ``tsearch.train.optim``; beta_0 is ``optim.beta1``.
    """

    enabled: bool = False
    # beta1 reached at the end of the decay (linear, exponential); demon ignores it and ends at 0.
    end: float = Field(0.5, ge=0.0, lt=1.0)
    kimg: Kimg = Field(10.0, gt=0.0)  # length of the decay in kimg; beta1 stays at its end after
    # linear: beta_0 -> end; exponential: 1-beta1 geometric from 1-beta_0 to 1-end;
    # demon: beta_0 (1-tau) / ((1-beta_0) + beta_0 (1-tau)), tau = progress through the decay.
    shape: Literal["linear", "exponential", "demon"] = "linear"
    # none; adam: lr (1-beta_0)/(1-beta1_t), keeps lr (1-beta1) constant (lowers lr);
    # heavy_ball: lr (1-beta1_t)/(1-beta_0), SGD-style momentum only (refused for Adam/AdamW).
    lr_compensation: Literal["none", "adam", "heavy_ball"] = "none"


class OptimConfig(_Section):
    # Optimizers whose momentum is an EMA, m = beta1 m + (1 - beta1) g: heavy-ball compensation
    # (lr / (1 - beta1) constant) assumes un-normalised momentum and would raise their step.
    NORMALISED_MOMENTUM: ClassVar[tuple[str, ...]] = ("adam", "adamw")

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)  # uncapped: a huge value diverges (reported)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)  # max global grad norm; null disables
    warmup_kimg: Kimg = Field(0.0, ge=0.0)  # linear learning-rate warm-up
    momentum_decay: MomentumDecayConfig = MomentumDecayConfig()

    @model_validator(mode="after")
    def _compensation_fits_optimizer(self) -> OptimConfig:
        compensation = self.momentum_decay.lr_compensation
        if compensation == "heavy_ball" and self.name in self.NORMALISED_MOMENTUM:
            raise ValueError(
                "optim.momentum_decay.lr_compensation='heavy_ball' keeps lr/(1-beta1) constant, "
                f"which fits SGD-style momentum only: with optim.name={self.name!r} it raises the "
                "step as beta1 decays; use 'adam' (lr (1-beta1_0)/(1-beta1_t)) or 'none'"
            )
        return self


class TrainConfig(_Section):
    total_kimg: Kimg = Field(20.0, gt=0.0)  # training length in thousands of images
    batch_size: int = Field(64, ge=1, le=65536)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # with warm-up min(d, (1+n)/(10+n))
    seed: Seed = 0  # data order, noise and timestep generators derive from it
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA only
    threads: int | None = Field(None, ge=1, le=MAX_WORKERS)  # intra-op threads; null: torch's
    log_every_kimg: Kimg = Field(0.5, gt=0.0)
    out_dir: str = "tsearch-runs/train"  # one sub-directory per run
    progress: bool = True  # progress bar on stderr


class EvalConfig(_Section):
    # Keys of tsearch.metrics.registry.EVALUATIONS run at each evaluation point, in order.
    metrics: tuple[str, ...] = Field(("fid",), min_length=1)
    every_kimg: Kimg = Field(5.0, gt=0.0)  # FID (and a checkpoint) every N kimg and at the end
    # Evaluate at these kimg (and at the end) instead: a search sets ASHA's rungs here for its
    # trials (plus every curve_every_kimg), so evaluations fall where ASHA decides.
    at_kimg: tuple[Kimg, ...] = Field((), max_length=10_000)
    # In a search with ASHA: extra evaluation points every N kimg (None: rungs and end only).
    curve_every_kimg: Kimg | None = Field(None, gt=0.0)
    num_images: int = Field(1000, ge=2, le=MAX_IMAGES)  # generated images per FID
    # Evaluations at at_kimg points before the end (a search trial's rungs and curve points)
    # may be cheaper than the final one: ASHA only compares trials at the same rung, all scored
    # alike. None: num_images / steps. tsearch train and confirmation runs evaluate every
    # every_kimg, so they never use these (benchmarks/eval_fidelity.py measures the choice).
    rung_num_images: int | None = Field(None, ge=2, le=MAX_IMAGES)
    rung_steps: int | None = Field(None, ge=1, le=100_000)
    ref_images: int | None = Field(None, ge=2, le=MAX_IMAGES)  # null: the whole split
    ref_split: Literal["train", "test"] = "train"
    # vp: ddim or ddpm; flow: euler or heun (the flow default when method is not given).
    method: Literal["ddim", "ddpm", "euler", "heun"] = "ddim"
    steps: int = Field(50, ge=1, le=100_000)  # generation steps (DDIM: a subsequence of T)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # DDIM stochasticity
    batch_size: int = Field(500, ge=1, le=65536)
    extractor: Literal["auto", "digits", "inception"] = "auto"  # auto: digits for digits
    inception_weights: str | None = None  # pt_inception-2015-12-05 .pth; or env var
    seed: Seed = 2024  # per-image generation seeds start here
    cache_dir: str = "tsearch-runs/cache"  # extractor weights and reference statistics
    at_start: bool = False  # also evaluate the untrained model at kimg 0


class TrackingConfig(_Section):
    backend: Literal["mlflow", "none"] = "mlflow"
    uri: str = "sqlite:///tsearch-runs/mlflow.db"  # relative sqlite paths resolve against cwd
    # Used when the experiment is created; None: the tracking server's own artifact store.
    artifact_root: str | None = "tsearch-runs/artifacts"
    experiment: str = "tsearch"
    run_name: str | None = None  # also the run's directory name: letters, digits, . _ + -

    _run_name_is_safe = field_validator("run_name")(_safe_name)


class AshaConfig(_Section):
    """ASHA early stopping on FID; times in kimg (ASHA's time_attr)."""

    enabled: bool = True
    grace_kimg: Kimg = Field(2.0, gt=0.0)  # a trial runs at least this long
    reduction_factor: float = Field(3.0, gt=1.0, le=1000.0)  # keep the best 1/rf at each rung
    brackets: int = Field(1, ge=1, le=100)


class ConfirmConfig(_Section):
    """The confirmation stage: the search's top configurations retrained on fresh seeds.

    A search's best trial is the minimum of many noisy trials on one seed, so it flatters
    itself (the winner's curse); the confirmed ranking (mean over ``seeds``) is the search's
    answer. ``set`` checks a search on a cheap proxy at the target scale.
    """

    enabled: bool = False
    top_k: int = Field(3, ge=1, le=100)  # distinct configurations besides the baseline
    # Training seeds (train.seed) of the confirmation runs: none may be one a search trial used.
    seeds: tuple[Seed, ...] = Field((101, 102, 103), min_length=1, max_length=100)
    # The baseline retrained beside them: None = the first points_to_evaluate (else uniform at
    # its defaults); a sampler name = that sampler at its defaults (as seed_with_defaults
    # adds it); a mapping = a point of the space ({dotted key: value}).
    baseline: str | dict[str, Any] | None = None
    # Dotted overrides for the confirmation runs only (e.g. a larger model, resolution, budget).
    set: dict[str, Any] = Field(default_factory=dict)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_WORKERS)  # None: search.max_concurrent

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct (a repeated seed repeats one run)")
        return value

    @field_validator("set")
    @classmethod
    def _no_search(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key.split(".")[0] == "search" or key == "train.seed":
                raise ValueError(f"set.{key}: the confirmation runs' {key} is not settable "
                                 "(seeds come from search.confirm.seeds)")
        return value


class SearchConfig(_Section):
    """How `tsearch search` explores: ignored by `tsearch train`."""

    name: str | None = None  # experiment name (Ray run dir, Optuna study, MLflow parent run)
    # A key of tsearch.search.algorithms.ALGORITHMS: Optuna's TPE or random sampler, or every
    # cell of the space once (grid); checked against the registry before anything starts.
    algorithm: str = "tpe"
    num_samples: int = Field(10, ge=1, le=MAX_COUNT)  # trials (a grid runs each cell once)
    max_concurrent: int = Field(2, ge=1, le=MAX_WORKERS)
    seed: int = Field(0, ge=0, le=MAX_OPTUNA_SEED)  # TPE / random sampler seed (numpy: 32 bit)
    tpe_startup_trials: int = Field(5, ge=1, le=MAX_COUNT)  # random trials before TPE models
    metric: Literal["eval/fid"] = names.FID
    mode: Literal["min"] = "min"
    asha: AshaConfig = AshaConfig()
    cpus_per_trial: float = Field(1.0, gt=0.0, le=MAX_WORKERS)
    gpus_per_trial: float = Field(0.0, ge=0.0, le=MAX_WORKERS)  # 0.5 = two trials per GPU
    storage_path: str = "tsearch-runs/ray"  # trial checkpoints; shared storage on a cluster
    max_failures: int = Field(1, ge=0, le=1000)  # retries of a failed trial, from a checkpoint
    num_to_keep: int = Field(2, ge=1, le=MAX_COUNT)  # checkpoints kept per trial
    # Run the next trial in the finished trial's worker process: a new process pays its imports
    # (torch, diffusers, MLflow: seconds) again, which is most of a short trial's overhead.
    reuse_actors: bool = True
    # Dotted config key -> distribution, e.g. {"optim.lr": {"float": [1e-4, 1e-2], "log": true}}
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)  # tried first
    # Also try first, for every sampler among the space's choices, that sampler at its
    # registry defaults with the weighting its paper pairs it with: a search can then only
    # match or beat the best default.
    seed_with_defaults: bool = False
    confirm: ConfirmConfig = ConfirmConfig()

    _name_is_safe = field_validator("name")(_safe_name)


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
        flow = self.diffusion.process == "flow"
        if flow and self.eval.method in ("ddim", "ddpm"):
            if "method" in self.eval.model_fields_set:
                raise ValueError(f"eval.method = {self.eval.method} samples the vp process; "
                                 "diffusion.process = flow generates with euler or heun")
            object.__setattr__(self, "eval", self.eval.model_copy(update={"method": "euler"}))
        if not flow and self.eval.method in ("euler", "heun"):
            raise ValueError(f"eval.method = {self.eval.method} integrates the flow-matching ODE; "
                             "set diffusion.process: flow, or use ddim or ddpm")
        for key in ("steps", "rung_steps"):
            steps = getattr(self.eval, key)
            if self.eval.method == "ddim" and steps is not None \
                    and steps > self.diffusion.num_timesteps:
                raise ValueError(
                    f"eval.{key}={steps} exceeds diffusion.num_timesteps="
                    f"{self.diffusion.num_timesteps}"
                )
        most = max(self.eval.num_images, self.eval.rung_num_images or 0)
        if self.eval.seed + most - 1 > MAX_SEED:
            raise ValueError(
                f"eval.seed = {self.eval.seed}: image i is generated from seed eval.seed + i, "
                f"which must stay <= 2^63-1; use an eval.seed below {MAX_SEED - most + 2}"
            )
        for section in ("sampler", "weighting"):
            # Plugin hyperparameters that depend on T (e.g. SpeeD's tau as an index).
            check = getattr(getattr(self.timesteps, section).params, "timesteps_problem", None)
            problem = check(self.diffusion.num_timesteps) if check is not None else None
            if problem:
                raise ValueError(f"timesteps.{section}.params.{problem}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict that ``Config.model_validate`` accepts back unchanged."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


MAX_YAML_NODES = 100_000  # values in a YAML document with every alias expanded (~1000x ours)
MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything this large is the wrong file


class _YamlProblem(Exception):
    """Why a YAML text was refused (turned into a ConfigError naming the file or override)."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, as our own class so that nothing added here leaks into PyYAML's."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse a key written twice in one mapping: PyYAML keeps the last one silently, so a
        second ``timesteps.sampler.params.mu`` in a search space would drop the first."""
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overrides: fine
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _YamlProblem(f"has the key {key!r} twice in one mapping (lines "
                                       f"{first[key]} and {line}); the second would silently "
                                       "replace the first: keep one")
                first[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error says so below
                continue
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Number of values ``root`` stands for once every alias is expanded (stops past the cap).

    Aliases share nodes, so a few lines can stand for 10^7 values (a "billion laughs"), which
    our deep copies would then build; an alias inside its own anchor is a cycle.
    """
    memo: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk: deep nesting must not hit the recursion limit
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _children(node)
            memo[key] = min(1 + sum(memo[id(c)] for c in children), MAX_YAML_NODES + 1)
            if memo[key] > MAX_YAML_NODES:
                raise _YamlProblem(f"expands to more than {MAX_YAML_NODES} values (aliases "
                                   "repeated inside aliases?); write the values out")
            continue
        if key in memo:
            continue
        if key in active:
            raise _YamlProblem("has a recursive alias (an anchor used inside itself)")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in memo)
    return memo[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _load_yaml(text: str) -> Any:
    """One YAML document as Python data, refusing cycles and alias bombs (raises _YamlProblem).

    Returns None for a document with no content (empty, or only comments).
    """
    loader = None
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters right here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _YamlProblem(f"is not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise _YamlProblem("is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise _YamlProblem(f"has a value that cannot be read ({str(exc).split(';')[0]})") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML so ``5``, ``true``, ``[1,2]`` work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.total_kimg=5)")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part (e.g. train.total_kimg=5)")
    try:
        value = _load_yaml(text) if text.strip() else ""
    except _YamlProblem as exc:
        shown = item if len(item) <= 80 else item[:60] + "..."
        raise ConfigError(f"config error: override {shown!r} {exc}") from None
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
    if len(shown) > 80:  # a 5000-digit number or a long list: the key says which value
        shown = shown[:60] + "..."
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
    """Read a YAML mapping, with one-line errors for a missing, unreadable or malformed file.

    An empty file is an error, not a default run: it is almost always the wrong file.
    """
    p = Path(path)
    name = f"config file {str(p)!r}"
    if p.is_dir():
        raise ConfigError(f"{name} is a directory (give a path to a YAML file)")
    if not p.is_file():
        raise ConfigError(f"{name} does not exist (give a path to a YAML file)")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name} is larger than {MAX_CONFIG_BYTES // 1000} KB: a config "
                              "is a few KB of YAML (wrong file?)")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text (a binary file?); give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{name} cannot be read ({exc.strerror or exc})") from None
    try:
        data = _load_yaml(text)
    except _YamlProblem as exc:
        raise ConfigError(f"{name} {exc}") from None
    if data is None:
        raise ConfigError(f"{name} is empty: write the sections to change (e.g. train: "
                          "{total_kimg: 5}), or {} to run every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping of sections (data:, train:, ...), "
                          f"not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{name}: top-level key {bad[0]!r} is not a section name (data, "
                          "model, train, ...)")
    return data


# Top-level sections of a config file. An overlay may hold every one but ``search``: it changes
# what a run trains, not how a search explores.
SECTIONS: tuple[str, ...] = tuple(Config.model_fields)
OVERLAY_SECTIONS: tuple[str, ...] = tuple(s for s in SECTIONS if s != "search")
# Mappings an overlay replaces whole: the base's params belong to the base's sampler (or
# weighting) and would be invalid, or silently kept, under another one.
_REPLACED_WHOLE = (("timesteps", "sampler"), ("timesteps", "weighting"))


def merge_overlay(raw: Mapping[str, Any], overlay: Mapping[str, Any],
                  source: str = "overlay") -> dict[str, Any]:
    """``raw`` with ``overlay`` deep-merged onto it: nested mappings merge, other values replace.

    An overlay (``tsearch export best --only timesteps,optim``) carries a recipe found on one
    base config onto another, so it may only hold config sections, never ``search``.
    ``timesteps.sampler`` and ``timesteps.weighting`` replace the base's whole mapping.
    ``source`` names the overlay in errors (one-line :class:`ConfigError`).
    """
    if "search" in overlay:
        raise ConfigError(f"overlay {source!r} has a search section: an overlay changes what a "
                          "run trains, not how a search explores; put search settings in the "
                          "base config")
    bad = [k for k in overlay if k not in OVERLAY_SECTIONS]
    if bad:
        raise ConfigError(f"overlay {source!r}: top-level key {bad[0]!r} is not a config section; "
                          f"overlay sections: {', '.join(OVERLAY_SECTIONS)}")
    out = json.loads(json.dumps(dict(raw), default=str))
    stack: list[tuple[dict[str, Any], Mapping[str, Any], tuple[str, ...]]] = [(out, overlay, ())]
    while stack:
        node, top, path = stack.pop()
        for key, value in top.items():
            where = (*path, key)
            if (isinstance(value, Mapping) and isinstance(node.get(key), dict)
                    and where not in _REPLACED_WHOLE):
                stack.append((node[key], value, where))
            else:
                node[key] = json.loads(json.dumps(value, default=str))
    return out


def apply_overlays(raw: Mapping[str, Any], overlays: Iterable[str | Path]) -> dict[str, Any]:
    """``raw`` with each overlay file (read with :func:`read_yaml`) merged on, later files last."""
    out = dict(raw)
    for path in overlays:
        out = merge_overlay(out, read_yaml(path), str(path))
    return out


def parse_sections(text: str, option: str = "--only") -> tuple[str, ...]:
    """Comma-separated config section names (``timesteps,optim``), checked, in given order.

    ``option`` names the setting in the one-line :class:`ConfigError`.
    """
    chosen: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name and name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"{option} {text!r} names no section; give one or more of "
                          f"{', '.join(OVERLAY_SECTIONS)} (e.g. {option} timesteps,optim)")
    for name in chosen:
        if name not in OVERLAY_SECTIONS:
            raise ConfigError(f"{option} {text!r}: {name!r} is not a config section an overlay "
                              f"can hold; sections: {', '.join(OVERLAY_SECTIONS)}")
    return tuple(chosen)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                overlays: Iterable[str | Path] = ()) -> Config:
    """Defaults <- environment <- YAML file (if any) <- overlay files <- dotted overrides.

    Overlays (e.g. ``tsearch export best --only timesteps,optim``) are merged onto the file's
    raw dict as :func:`merge_overlay` describes. ``MLFLOW_TRACKING_URI`` (MLflow's own
    convention) and ``TSEARCH_STORAGE_PATH`` fill ``tracking.uri`` and ``search.storage_path``
    when neither the files nor an override sets them, so one environment (e.g. a cluster's)
    points every command at the same server and storage.
    """
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overlays(raw, overlays)
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


# Fields that describe the machine a run happened on, not the recipe: an exported config gets
# their defaults back, so it trains the same way anywhere (tracking goes to the reader's store).
MACHINE_FIELDS = (("tracking", "uri"), ("tracking", "artifact_root"), ("eval", "cache_dir"),
                  ("train", "out_dir"), ("train", "device"), ("train", "threads"),
                  ("train", "progress"), ("tracking", "run_name"), ("eval", "inception_weights"))


def portable_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict to share: machine fields reset to their defaults, no ``search`` section.

    What a search resolved for its trials (absolute cache and store paths, one thread per trial,
    the trial device) would otherwise travel into ``tsearch export`` files and from there onto
    another machine. ``data.root`` stays: it names the data the recipe was found on (the
    Inception weights file does not: the reader gives their own, or TSEARCH_INCEPTION_WEIGHTS).
    """
    out = json.loads(json.dumps(dict(raw)))  # a deep copy of JSON-safe values
    out.pop("search", None)
    defaults = Config().to_dict()
    for section, key in MACHINE_FIELDS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section][key] = defaults[section][key]
    return out


def portable_overlay(raw: Mapping[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """Only ``sections`` of a config dict, portable, to apply onto another base config.

    Machine fields are left out rather than reset to defaults: applied with
    :func:`merge_overlay`, the base then keeps its own device, threads and paths.
    """
    full = portable_dict(raw)
    out = {section: full[section] for section in sections if section in full}
    for section, key in MACHINE_FIELDS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out
