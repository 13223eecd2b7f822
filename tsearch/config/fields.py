"""The building blocks every config section shares: the section base, bounds and safe names."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tsearch import names

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


def safe_name(value: str | None) -> str | None:
    """A name that becomes a directory (run, experiment): refuse separators and the like."""
    problem = None if value is None else names.name_problem(value)
    if problem is not None:
        raise ValueError(f"{problem} (it names a directory)")
    return value


class Section(BaseModel):
    """A config section: a typo is an error, not a silently ignored key; values are final."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

