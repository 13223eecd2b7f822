"""Warm start (``tsearch search CONFIG --warm-start SEARCH``): an earlier search's trials, told
to the new search's Optuna study before it proposes anything.

The earlier search is read back from MLflow, read-only. A trial counts with the value Optuna
would have seen at the new budget: its FID at ``train.total_kimg`` if it got there, else its last
FID before (an ASHA-stopped trial). Only points of the new space are told: a trial whose values
the new space cannot propose would mislead the model, so it is skipped with a note; searches of
different keys or metrics are refused in one line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from tsearch import names
from tsearch.config import Config
from tsearch.errors import ConfigError
from tsearch.log import get_logger
from tsearch.search.algorithms import ALGORITHMS, WarmTrial, get_algorithm
from tsearch.search.space import ParamSpec, SearchSpace
from tsearch.tracker import flatten_params

log = get_logger(__name__)

# Parent-run params ``search.space.KEY.<kind>...``: KEY is a searched key of that search.
_SPACE_PARAM = re.compile(r"^search\.space\.(.+?)\.(?:float|int|choice|bundle)(?:\.|$)")
# Settings that change what an FID number means: another value, another scale.
_FID_SETTINGS = ("data.name", "data.resolution", "eval.num_images", "eval.rung_num_images",
                 "eval.rung_steps", "eval.ref_images",
                 "eval.ref_split", "eval.method", "eval.steps", "eval.eta", "eval.extractor",
                 "eval.seed")


def warm_trials(tracking_uri: str, search_ref: str, cfg: Config,
                space: SearchSpace) -> tuple[WarmTrial, ...]:
    """The finished search-phase trials of search ``search_ref`` as points of ``space``.

    Raises :class:`~tsearch.errors.ConfigError` (one line) when the algorithm learns from
    nothing, the searches differ in metric or searched keys, or no trial fits; logs one note
    line for skipped trials and one for evaluation settings that differ.
    """
    from tsearch.tracking.fetch import metric_histories
    from tsearch.tracking.queries import search_trials

    s = cfg.search
    if not get_algorithm(s.algorithm).supports_warm_start:
        able = ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.supports_warm_start))
        raise ConfigError(f"config error: --warm-start: search.algorithm {s.algorithm!r} runs "
                          f"fixed trials and learns from none; use one of {able}, or drop "
                          "--warm-start")
    parent, records = search_trials(tracking_uri, search_ref)
    where = f"--warm-start {search_ref}"
    old_metric = parent.params.get(f"{names.PARAM_SEARCH}.metric", s.metric)
    old_mode = parent.params.get(f"{names.PARAM_SEARCH}.mode", s.mode)
    if (old_metric, old_mode) != (s.metric, s.mode):
        raise ConfigError(f"config error: {where}: that search ranked trials by {old_metric} "
                          f"({old_mode}), this one by {s.metric} ({s.mode}); warm-start from a "
                          "search on the same metric")
    _check_keys(where, parent.params, space)
    records = [r for r in records if r.phase in (None, names.PHASE_SEARCH)
               and r.status == "FINISHED"]
    histories = metric_histories(tracking_uri, [r.run_id for r in records], s.metric)
    budget = int(round(cfg.train.total_kimg * 1000))
    by_param = {_param_name(k): k for k in space.specs}
    warm: list[WarmTrial] = []
    skipped: list[str] = []
    scored = 0
    for record in records:
        batch = record.config.get(names.BATCH_SIZE_KEY) or cfg.train.batch_size
        value = value_at_budget(histories[record.run_id], budget, int(batch))
        if value is None:
            continue
        scored += 1
        values = {by_param.get(k, k): v for k, v in record.values.items()}
        params, problem = point_of(space, values)
        if params is None:
            skipped.append(f"{record.trial_id} ({problem})")
        else:
            warm.append(WarmTrial(params=params, value=value))
    if not scored:
        raise ConfigError(f"config error: {where}: no finished search trial of {parent.name!r} "
                          f"has a {s.metric} value; warm-start from a search whose trials "
                          "reached an evaluation")
    if not warm:
        raise ConfigError(f"config error: {where}: none of the {scored} trials of "
                          f"{parent.name!r} is a point of this space (e.g. {skipped[0]}); widen "
                          "search.space to cover them, or drop --warm-start")
    if skipped:
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        log.info(f"note: warm start skips {len(skipped)} of {scored} trials of search "
                 f"{parent.name!r}, outside this space: {shown}")
    differ = _fid_settings_differ(parent.params, cfg)
    if differ:
        log.info(f"note: search {parent.name!r} measured {s.metric} with other settings "
                 f"({'; '.join(differ)}): its values may not compare with this search's")
    return tuple(warm)


def value_at_budget(history: list[tuple[int, float]], budget: int,
                    batch: int) -> float | None:
    """A trial's metric at ``budget`` images, or its last one before; None if it has none.

    The trainer evaluates at the first step reaching a point, so the evaluation "at" the budget
    lies within one batch after it. Non-finite values (a diverged trial) are not a result.
    """
    before = [v for step, v in history if step < budget + batch]
    return before[-1] if before and math.isfinite(before[-1]) else None


def point_of(space: SearchSpace,
             values: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The values the space's define-by-run function would suggest for a trial, or why not.

    ``values`` are the trial's flat config (searched keys, bundle labels and what bundles set).
    Keys are walked in the space's order with its ``when`` conditions; each value must be one
    the space can propose. Returns ``(params, None)`` or ``(None, reason)``.
    """
    chosen: dict[str, Any] = {}
    params: dict[str, Any] = {}
    set_by_bundles: dict[str, Any] = {}
    for key, spec in space.specs.items():
        if not spec.active(chosen):
            if key in values:
                return None, f"{key}={values[key]!r}, but its `when` does not hold here"
            continue
        if key not in values:
            return None, f"no value for {key}"
        value, problem = _proposable(key, spec, values[key])
        if problem:
            return None, problem
        if spec.bundle is not None:
            for k, want in spec.bundle[value].items():
                if k in values and values[k] != want:
                    return None, f"bundle {key}={value} sets {k}={want!r} here, {values[k]!r} there"
            chosen.update(spec.bundle[value])
            set_by_bundles.update(spec.bundle[value])
        params[key] = chosen[key] = value
    extra = sorted(k for k in values if k not in space.specs and k not in set_by_bundles)
    if extra:
        return None, f"it searched {extra[0]}, which this space does not"
    return params, None


def _proposable(key: str, spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    """``value`` as the space would propose it (the choice itself), or why it cannot be."""
    if spec.bundle is not None:
        if value in spec.bundle:
            return value, None
        return None, f"{key}={value!r} is not one of the bundles {sorted(spec.bundle)}"
    if spec.choice is not None:
        for choice in spec.choice:  # True == 1 in Python, but not as a choice
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return choice, None
        return None, f"{key}={value!r} is not among the choices {spec.choice}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"{key}={value!r} is not a number"
    lo, hi = spec.float_range or spec.int_range
    if not lo <= value <= hi:
        return None, f"{key}={value:g} is outside [{lo:g}, {hi:g}]"
    if spec.int_range is not None:
        if value != int(value) or (int(value) - lo) % int(spec.step or 1):
            return None, f"{key}={value:g} is not on the int grid of step {spec.step or 1:g}"
        return int(value), None
    if spec.step is not None and not spec.log:
        k = (value - lo) / spec.step
        if abs(k - round(k)) >= 1e-8:  # Optuna's own tolerance (FloatDistribution)
            return None, f"{key}={value:g} is not on the grid of step {spec.step:g}"
    return float(value), None


def _check_keys(where: str, params: Mapping[str, str], space: SearchSpace) -> None:
    """Refuse a search of other keys; an old store without ``search.space`` params passes here
    (then each trial's keys are checked by :func:`point_of`)."""
    old = {m.group(1) for k in params if (m := _SPACE_PARAM.match(k))}
    new = {_param_name(k) for k in space.specs}
    if not old or old == new:
        return
    there, here = sorted(old - new), sorted(new - old)
    diff = "; ".join(part for part in (
        f"only there: {', '.join(there)}" if there else "",
        f"only here: {', '.join(here)}" if here else "") if part)
    raise ConfigError(f"config error: {where}: that search and this one search different keys "
                      f"({diff}); warm-start from a search of the same keys, or drop "
                      "--warm-start")


def _param_name(key: str) -> str:
    """``key`` as MLflow params spell it (characters MLflow refuses become ``_``)."""
    return next(iter(flatten_params({key: 0})))


def _fid_settings_differ(params: Mapping[str, str], cfg: Config) -> list[str]:
    """``key there -> here`` for each setting that defines the FID and differs (logged ones)."""
    out = []
    for key in _FID_SETTINGS:
        section, field = key.split(".")
        old = params.get(f"{names.PARAM_BASE}.{key}")
        new = str(getattr(getattr(cfg, section), field))
        if old is not None and old != new:
            out.append(f"{key} {old} there, {new} here")
    return out
