"""The timestep-sampler and loss-weighting contracts (docs/design.md section 3).

A :class:`TimestepSampler` decides which diffusion timesteps a training batch uses. It never sees
the model, the optimizer or the data loader: the trainer measures and hands it read-only results
through :meth:`~TimestepSampler.observe` (per-sample losses of every step) and the probe path
(:meth:`~TimestepSampler.probe_request` / :meth:`~TimestepSampler.observe_probe`: look-ahead
losses before and after the optimizer step, or per-sample gradient norms).

Ancestor: improved-diffusion's ``ScheduleSampler`` (``sample`` returns ``(t, 1/(T p_t))`` for
unbiased samplers; loss-aware samplers are fed *unweighted* losses). Unlike it, every sampler owns
a seeded ``torch.Generator`` and can be checkpointed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from tsearch.diffusion.schedule import NoiseSchedule


class Params(BaseModel):
    """Base of every plugin's hyperparameter model: typed, validated, finite, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def timesteps_problem(self, num_timesteps: int) -> str | None:
        """Why these values cannot work with T = ``num_timesteps``, or None.

        The answer reads ``"field = value: what is wrong; how to fix it"``. The config's
        cross-checks (which know T) call it, so that a T-dependent mistake is one line before
        training or a search starts rather than a failure inside every trial.
        """
        return None


def _whole_if_index(value: float) -> float:
    if value <= 1:
        return value
    if value != int(value):
        raise ValueError("a value > 1 is a timestep index and must be a whole number; give a "
                         "fraction of T in [0, 1] or a whole index")
    return int(value)  # an index stays an int (700, not 700.0, in configs and MLflow params)


# A timestep given relative to T (0 <= value <= 1) or as an absolute index (a whole value > 1),
# so that one config works for every diffusion.num_timesteps. See :func:`timestep_index`.
FractionOrIndex = Annotated[float, Field(ge=0.0, le=1e6), AfterValidator(_whole_if_index),
                            PlainSerializer(lambda v: v, return_type=Any)]


def timestep_index(value: float, num_timesteps: int) -> int:
    """The index a :data:`FractionOrIndex` names: round(value * T) for value <= 1, else value.

    0.7 is index 700 at T = 1000, 14 at T = 20 and 2800 at T = 4000; 1 (or 1.0) is T itself.
    """
    if value <= 1:
        return math.floor(value * num_timesteps + 0.5)
    return int(value)


class NoParams(Params):
    """For plugins without hyperparameters."""


@dataclass(frozen=True)
class StepContext:
    """What the trainer tells a sampler about the current step.

    ``x0`` is the detached clean batch (on the training device) for x0-conditioned samplers;
    samplers must not modify it.

    ``weighting`` is the loss weighting the trainer multiplies into each per-sample loss (None:
    w = 1). The losses handed to :meth:`TimestepSampler.observe` stay unweighted, so that the
    trainer need not know which sampler wants what; a loss-aware sampler that wants the loss
    being optimised (after the weighting, before importance weights, as improved-diffusion feeds
    its resampler) multiplies by :meth:`loss_weight` itself, for the drawn t or a probe's t.
    """

    step: int  # optimizer steps taken before this one
    kimg: float  # training images seen so far / 1000
    progress: float  # kimg / total_kimg, in [0, 1]
    lr: float = 0.0
    x0: torch.Tensor | None = None
    weighting: LossWeighting | None = None

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) of the run's weighting at timesteps ``t`` (float32, t's device); ones if None."""
        if self.weighting is None:
            return torch.ones(t.shape, device=t.device)
        return self.weighting.weights(t)


@dataclass(frozen=True)
class Draw:
    """Timesteps for one batch and the factor each sample's loss is multiplied by.

    ``importance_weight`` is 1/(T p_t) for unbiased samplers and ones for the samplers that change
    the objective on purpose.
    """

    t: torch.Tensor  # int64 [n], values in [0, T)
    importance_weight: torch.Tensor  # float32 [n], finite and > 0


@dataclass(frozen=True)
class ProbeSpec:
    """A sampler's request for measurements around this step's optimizer update.

    The trainer evaluates, without gradients, the loss of row ``i`` at image
    ``image_index[i]`` of the current batch and timestep ``t[i]``:

    - ``kind="delta"``: once before the update and once after it (model weights, not EMA).
      With ``common_noise`` the same noise is used both times (common random numbers);
      otherwise each evaluation draws fresh noise (the reference code's behaviour).
    - ``kind="grad_norm"``: the squared L2 norm of the gradient of each row's loss with respect
      to the model parameters, at the current weights (before the update).

    ``loss="vlb"`` is the VLB term in bits/dim, ``loss="mse"`` the plain per-sample eps-MSE.
    """

    t: torch.Tensor  # int64 [m]
    image_index: torch.Tensor  # int64 [m], indices into the current batch
    kind: str = "delta"  # a key of tsearch.train.probe.PROBE_KINDS
    loss: Literal["vlb", "mse"] = "vlb"
    common_noise: bool = True


@dataclass(frozen=True)
class ProbeResult:
    """Measurements for a :class:`ProbeSpec`; tensors are detached float32 on the CPU.

    ``forwards`` counts the sample-forward-equivalents spent (a backward counts as two), so that
    comparisons can be normalised by compute.
    """

    spec: ProbeSpec
    before: torch.Tensor  # [m] loss at the current weights
    after: torch.Tensor | None = None  # [m] loss after the update (kind="delta")
    grad_sq_norm: torch.Tensor | None = None  # [m] (kind="grad_norm")
    forwards: int = 0


class TimestepSampler(ABC):
    """Chooses the diffusion timesteps of each training batch.

    Subclasses set ``name``, ``Params`` (a :class:`Params` model) and ``unbiased``, implement
    :meth:`sample` and :meth:`probs`, and put any learned state into :meth:`state_dict`.
    Contract:

    - ``sample`` returns t in [0, T) and finite positive weights; it draws only from
      ``self.generator``, so equal seeds give equal draws.
    - An unbiased sampler's weights are 1/(T p_t) with p = ``probs()``, so that
      E_t~p[w_t L_t] = mean_t L_t.
    - ``observe`` / ``observe_probe`` must ignore non-finite values: a NaN loss never makes
      ``probs()`` NaN.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = NoParams
    unbiased: ClassVar[bool] = False
    learned: ClassVar[bool] = False  # p(t) is learned in training: the trainer watches collapse
    # The loss weighting this sampler's paper trains with (a WEIGHTINGS name): a search seeded
    # with every method's defaults (search.seed_with_defaults) pairs them so.
    paper_weighting: ClassVar[str] = "none"

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.params = params if params is not None else self.Params()
        self.generator = torch.Generator().manual_seed(int(seed))

    @abstractmethod
    def sample(self, n: int, ctx: StepContext) -> Draw:
        """Timesteps for a batch of ``n`` (on the CPU; the trainer moves them)."""

    @abstractmethod
    def probs(self) -> torch.Tensor:
        """The current marginal p(t), float64 [T], summing to 1 (an estimate if implicit)."""

    def observe(self, draw: Draw, losses: torch.Tensor, ctx: StepContext) -> None:  # noqa: B027
        """Unweighted per-sample losses of the batch just drawn (detached, CPU, float32)."""

    def probe_request(self, ctx: StepContext) -> ProbeSpec | None:
        """Ask for measurements around this step's update, or None (the common case)."""
        return None

    def observe_probe(self, result: ProbeResult, ctx: StepContext) -> None:  # noqa: B027
        """Receive what :meth:`probe_request` asked for, after the optimizer step and EMA."""

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging; the entropy of p(t) in nats by default."""
        return {"sampler/entropy": entropy(self.probs())}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with identical draws, generator state included."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # --- helpers for subclasses -------------------------------------------------------------
    def draw_from(self, p: torch.Tensor, n: int) -> Draw:
        """Draw n timesteps from the categorical ``p``; importance weights if ``unbiased``."""
        p = p.to(torch.float64)
        t = torch.multinomial(p, n, replacement=True, generator=self.generator)
        if self.unbiased:
            w = 1.0 / (self.num_timesteps * p[t])
            return Draw(t=t, importance_weight=w.to(torch.float32))
        return Draw(t=t, importance_weight=torch.ones(n))


class FixedDistributionSampler(TimestepSampler):
    """A sampler whose p(t) is a closed form of its params, the schedule and at most progress.

    Subclasses implement :meth:`probs_at` only (improved-diffusion's ``weights()``): ``sample``
    draws from it, ``probs`` reports it. Unless ``depends_on_progress``, it is computed once, at
    construction (so that a schedule it cannot work with fails there, as a config error).
    Otherwise it is recomputed from the training progress of every step, and that progress is
    checkpointed (``state_dict()["progress"]``) so that ``probs()`` after a resume is the
    distribution last drawn from.
    """

    depends_on_progress: ClassVar[bool] = False

    def __init__(self, schedule: NoiseSchedule, params: Params | None = None, seed: int = 0):
        super().__init__(schedule, params, seed)
        self.progress = 0.0  # of the last sample() with a finite progress
        self._fixed = None if self.depends_on_progress else self.probs_at(0.0)

    @abstractmethod
    def probs_at(self, progress: float) -> torch.Tensor:
        """p(t) at training progress in [0, 1], float64 [T], summing to 1."""

    def _current(self) -> torch.Tensor:
        return self._fixed if self._fixed is not None else self.probs_at(self.progress)

    def probs(self) -> torch.Tensor:
        """The distribution at the last progress passed to :meth:`sample` (0 initially)."""
        return self._current().clone()

    def sample(self, n: int, ctx: StepContext) -> Draw:
        if self.depends_on_progress and math.isfinite(ctx.progress):
            self.progress = float(ctx.progress)
        return self.draw_from(self._current(), n)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.depends_on_progress:
            state["progress"] = float(self.progress)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.depends_on_progress:
            self.progress = float(state["progress"])


class LossWeighting(ABC):
    """A fixed per-timestep weight w[T] multiplied into the per-sample loss.

    Built from the schedule and the network's prediction type (Min-SNR depends on it). Values
    are finite and positive; the table is float64 numpy, :meth:`weights` indexes it on device.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = NoParams

    def __init__(
        self, schedule: NoiseSchedule, params: Params | None = None, prediction: str = "eps"
    ):
        self.schedule = schedule
        self.params = params if params is not None else self.Params()
        self.prediction = prediction
        self._table = np.asarray(self.table(), dtype=np.float64)
        self._tensors: dict[str, torch.Tensor] = {}

    @abstractmethod
    def table(self) -> np.ndarray:
        """The weight of every timestep, float64 [T]."""

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """w[t] on t's device, float32 (for a learned weighting: its current value, detached)."""
        key = str(t.device)
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self._table, dtype=torch.float32).to(t.device)
        return self._tensors[key][t]

    # A learned weighting (EDM2's uncertainty) adds a term and owns parameters that the model's
    # optimizer trains with the model; a table weighting has none and these are no-ops.
    learned: ClassVar[bool] = False

    def objective(self, losses: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample objective from per-sample unweighted losses: w[t] * L for a table."""
        return losses * self.weights(t)

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer must train besides the model (none for a table)."""
        return []

    def to(self, device: torch.device | str) -> LossWeighting:
        """Move learned parameters to the training device."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """Learned state for checkpoints (empty for a table: it is rebuilt from the config)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly."""
        if state:
            raise ValueError(f"weighting {self.name!r} has no learned state to restore")

    def snapshot(self) -> np.ndarray:
        """The current w(t), float64 [T], for logging over training."""
        return self._table.copy()


def entropy(p: torch.Tensor) -> float:
    """Shannon entropy in nats; log(T) for uniform."""
    p = p.to(torch.float64).clamp_min(1e-300)
    return float(-(p * p.log()).sum())
