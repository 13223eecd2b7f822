"""The YAML search space: checked against the config, proposed to Optuna or as grid cells.

```yaml
search:
  space:
    timesteps.sampler.name: {choice: [uniform, speed, adaptive]}
    timesteps.sampler.params.k: {float: [1, 10], when: {timesteps.sampler.name: speed}}
    optim.lr: {float: [1.0e-4, 3.0e-3], log: true}
```

Entries are suggested in file order, and ``when`` may only refer to keys listed before it, so a
sampler is chosen before its own hyperparameters (a conditional space that TPE handles). Every
key is checked against the config models before anything runs: a sampler hyperparameter must be
a field of that sampler's ``Params``.

A ``bundle`` entry is a named choice among sets of values, for "methods" that set several keys
at once; its key is a free label (kept in the trial's config and reports, not a config field):

```yaml
    method:
      bundle:
        uniform: {timesteps.sampler.name: uniform}
        p2: {timesteps.sampler.name: uniform, timesteps.weighting.name: p2}
    diffusion.schedule: {choice: [linear, cosine], when: {method: uniform}}
```

``search.algorithm: grid`` runs every combination of the choices and bundles once (``when``
prunes the tree), which makes a replication study (method x schedule x seed) a search.

Before anything runs, every value a key can take is checked against its field, and every
reachable combination of choices and range ends is resolved into a full config and validated
(:func:`check_combinations`), so that values that only fail together (a sampler's tau and a
smaller ``diffusion.num_timesteps``) are one line at plan time, not a failed trial.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from tsearch.config import Config, merge_flat, validation_context
from tsearch.errors import ConfigError
from tsearch.labels import SAMPLER_KEY, WEIGHTING_KEY
from tsearch.timesteps import SAMPLERS, WEIGHTINGS, resolve_params, validate_config

_PLUGIN_KEYS = {"timesteps.sampler": SAMPLERS, "timesteps.weighting": WEIGHTINGS}


class ParamSpec(BaseModel):
    """One searched parameter: exactly one of ``float``, ``int``, ``choice`` or ``bundle``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              allow_inf_nan=False)

    float_range: tuple[float, float] | None = Field(None, alias="float")
    int_range: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None
    bundle: dict[str, dict[str, Any]] | None = None  # name -> {dotted key: value}
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, Any] = Field(default_factory=dict)  # key -> value or list of values

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [k for k in ("float_range", "int_range", "choice", "bundle")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [lo, hi], int: [lo, hi], choice: [...], "
                             "bundle: {name: {key: value}}")
        rng = self.float_range or self.int_range
        if rng is not None and not rng[0] < rng[1]:
            raise ValueError(f"range {list(rng)} must have lo < hi")
        if rng is not None and self.log and rng[0] <= 0:
            raise ValueError(f"log scale needs a positive range, got {list(rng)}")
        if self.step is not None and rng is None:
            raise ValueError("step applies to a float or int range, not to a choice or bundle")
        if self.step is not None and self.log:
            raise ValueError("step cannot be combined with log: true (Optuna refuses it); "
                             "drop one of them")
        if self.int_range is not None and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int range needs a whole step, got step {self.step}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice must list at least one value")
        if self.bundle is not None and not self.bundle:
            raise ValueError("bundle must name at least one set of values")
        return self

    def active(self, chosen: Mapping[str, Any]) -> bool:
        for key, want in self.when.items():
            allowed = want if isinstance(want, list) else [want]
            if key not in chosen or chosen[key] not in allowed:
                return False
        return True

    def values(self) -> list[Any] | None:
        if self.bundle is not None:
            return list(self.bundle)
        return list(self.choice) if self.choice is not None else None


def _config_field(key: str) -> FieldInfo | None:
    """The pydantic field a dotted config key names, or None."""
    cls: Any = Config
    field = None
    for part in key.split("."):
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return None
        field = fields[part]
        cls = field.annotation
    return field


def check_values(key: str, spec: ParamSpec, field: FieldInfo, owner: str = "") -> None:
    """Every value ``spec`` can propose must be one ``field`` accepts (type and bounds).

    A range is checked at both ends and, for a float range, at a fractional point inside it
    (an integer field cannot take what a float range proposes).
    """
    try:  # sections refuse inf and NaN in their model config; a bare type must be told
        adapter = TypeAdapter(field.rebuild_annotation(), config=ConfigDict(allow_inf_nan=False))
    except PydanticUserError:  # a model type (a whole section) brings its own config
        adapter = TypeAdapter(field.rebuild_annotation())
    if spec.float_range is not None:
        lo, hi = spec.float_range
        probes = [lo, hi, lo + (hi - lo) * 0.318309886]  # 1/pi: never a whole step
    elif spec.int_range is not None:
        probes = list(spec.int_range)
    elif spec.choice is not None:
        probes = list(spec.choice)
    else:
        return
    for value in probes:
        try:
            adapter.validate_python(value, context=validation_context(resolve_params))
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            kind = ("float" if spec.float_range else "int") if spec.values() is None else "choice"
            what = f" ({owner})" if owner else ""
            raise ConfigError(f"config error: search.space.{key}{what}: {kind} value {value!r} "
                              f"is not allowed: {msg}") from None


class DefineByRun:
    """Optuna define-by-run space; a module-level class so the searcher state can be pickled."""

    def __init__(self, specs: dict[str, ParamSpec]):
        self.specs = specs

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}  # what the chosen bundles set (Ray merges it in)
        for key, spec in self.specs.items():
            if not spec.active(chosen):
                continue
            if spec.bundle is not None:
                chosen[key] = trial.suggest_categorical(key, list(spec.bundle))
                constants.update(spec.bundle[chosen[key]])
                chosen.update(spec.bundle[chosen[key]])  # as in grid(): `when` may test them
            elif spec.choice is not None:
                chosen[key] = trial.suggest_categorical(key, spec.choice)
            elif spec.float_range is not None:
                lo, hi = spec.float_range
                chosen[key] = trial.suggest_float(key, lo, hi, log=spec.log,
                                                  step=None if spec.log else spec.step)
            else:
                lo, hi = spec.int_range
                chosen[key] = trial.suggest_int(key, lo, hi, log=spec.log,
                                                step=int(spec.step or 1))
        return constants or None


class SearchSpace:
    """Validated search space: ``specs`` in suggestion order."""

    def __init__(self, specs: dict[str, ParamSpec]):
        self.specs = specs

    @classmethod
    def from_config(cls, cfg: Config) -> SearchSpace:
        specs: dict[str, ParamSpec] = {}
        for key, raw in cfg.search.space.items():
            try:
                spec = ParamSpec.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                msg = err["msg"].removeprefix("Value error, ")
                where = ".".join(str(p) for p in err["loc"])
                extra = f" ({where})" if where else ""
                raise ConfigError(f"config error: search.space.{key}{extra}: {msg}") from None
            for dep in spec.when:
                if dep not in specs:
                    raise ConfigError(
                        f"config error: search.space.{key}: `when` refers to {dep!r}, which "
                        "must be a searched key listed before it"
                    )
            specs[key] = spec
        space = cls(specs)
        space._check_keys(cfg)
        return space

    @property
    def labels(self) -> list[str]:
        """Bundle keys: names in trial configs and reports, not config fields."""
        return [k for k, spec in self.specs.items() if spec.bundle is not None]

    def _check_keys(self, cfg: Config) -> None:
        base = cfg.to_dict()
        for key, spec in self.specs.items():
            if spec.bundle is not None:
                if _config_field(key) is not None:
                    raise ConfigError(f"config error: search.space.{key}: a bundle needs a label "
                                      "of its own (e.g. method), not a config field")
                for name, values in spec.bundle.items():
                    try:
                        resolve_trial_config(base, values)
                    except ConfigError as exc:
                        raise ConfigError(f"search.space.{key}.bundle.{name}: {exc}") from None
                continue
            plugin = next((p for p in _PLUGIN_KEYS if key.startswith(p + ".params.")), None)
            if plugin is None:
                field = _config_field(key)
                if field is None:
                    raise ConfigError(f"config error: search.space.{key}: not a config field "
                                      "(see `tsearch train CONFIG --dry-run` for the fields)")
                if key in (SAMPLER_KEY, WEIGHTING_KEY):
                    registry = _PLUGIN_KEYS[key.rsplit(".", 1)[0]]
                    bad = [v for v in spec.values() or [] if v not in registry]
                    if bad or spec.choice is None:
                        raise ConfigError(
                            f"config error: search.space.{key}: choose among "
                            f"{', '.join(sorted(registry))}, got {bad or 'a numeric range'}")
                else:
                    check_values(key, spec, field)
                continue
            param = key[len(plugin) + len(".params."):]
            for name in self._plugin_names(plugin, spec, cfg):
                fields = _PLUGIN_KEYS[plugin][name].Params.model_fields
                if param not in fields:
                    raise ConfigError(
                        f"config error: search.space.{key}: {name!r} has no hyperparameter "
                        f"{param!r}; it accepts {', '.join(sorted(fields)) or '(none)'}")
                check_values(key, spec, fields[param], owner=name)

    def _plugin_names(self, plugin: str, spec: ParamSpec, cfg: Config) -> list[str]:
        """Which samplers (or weightings) a ``.params.`` key is meant for."""
        name_key = f"{plugin}.name"
        if name_key in spec.when:
            want = spec.when[name_key]
            return want if isinstance(want, list) else [want]
        if name_key in self.specs:
            raise ConfigError(
                f"config error: search.space: {plugin}.params.* needs `when: {{{name_key}: ...}}` "
                f"because {name_key} is searched")
        section = cfg.timesteps.sampler if plugin.endswith("sampler") else cfg.timesteps.weighting
        return [section.name]

    def define_by_run(self) -> DefineByRun:
        """The function Optuna calls per trial; it only suggests (nothing to compute)."""
        return DefineByRun(self.specs)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of choices and bundles, in file order; ``when`` prunes branches.

        Each cell is a flat trial config: chosen values, bundle labels and what bundles set.
        """
        ranged = [k for k, spec in self.specs.items() if spec.values() is None]
        if ranged:
            raise ConfigError(f"config error: search.space.{ranged[0]}: search.algorithm = grid "
                              "needs choice: [...] or bundle: {...} for every key, not a range")
        return list(self.cells(lambda key, spec: spec.values() or []))

    def cells(self, options: Callable[[str, ParamSpec], list[Any]]) -> Iterator[dict[str, Any]]:
        """Flat trial configs of the tree where each active key takes each of ``options``.

        Keys are visited in file order and a key whose ``when`` does not hold is skipped, as in
        :class:`DefineByRun`; a bundle also sets its values. Lazy, so a caller can stop early.
        """
        keys = list(self.specs)

        def walk(i: int, cell: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(keys):
                yield cell
                return
            spec = self.specs[keys[i]]
            if not spec.active(cell):
                yield from walk(i + 1, cell)
                return
            for value in options(keys[i], spec):
                extra = spec.bundle[value] if spec.bundle is not None else {}
                yield from walk(i + 1, {**cell, keys[i]: value, **extra})

        yield from walk(0, {})

    def probe_points(self) -> dict[str, list[Any]]:
        """The values of each key whose combinations are checked: choices, bundles, range ends."""
        return {key: spec.values() or list(spec.float_range or spec.int_range or ())
                for key, spec in self.specs.items()}

    def describe(self) -> list[str]:
        lines = []
        for key, spec in self.specs.items():
            if spec.bundle is not None:
                dist = "bundle " + "; ".join(
                    f"{name}: " + ", ".join(f"{k}={v}" for k, v in vals.items())
                    for name, vals in spec.bundle.items())
            elif spec.choice is not None:
                dist = f"choice {spec.choice}"
            else:
                rng = spec.float_range or spec.int_range
                kind = "float" if spec.float_range else "int"
                dist = f"{kind} [{rng[0]:g}, {rng[1]:g}]" + (" log" if spec.log else "")
            cond = ("  when " + ", ".join(f"{k}={v}" for k, v in spec.when.items())
                    if spec.when else "")
            lines.append(f"{key}: {dist}{cond}")
        return lines


GRID_KEY = "cell"  # a grid trial's config is {GRID_KEY: {dotted key: value}} in Tune


def flat_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A trial's flat dotted values, whether Tune holds them directly or as a grid cell."""
    flat = dict(config or {})
    cell = flat.pop(GRID_KEY, None)
    return {**flat, **cell} if isinstance(cell, dict) else flat


def resolve_trial_config(base: Mapping[str, Any], flat: Mapping[str, Any],
                         labels: tuple[str, ...] | list[str] = ()) -> Config:
    """A trial's flat dotted values over the base config (bundle ``labels`` dropped), validated."""
    return validate_config(merge_flat(base, {k: v for k, v in flat.items() if k not in labels}))


MAX_COMBINATIONS = 4096  # resolved one by one (~0.2 ms each) up to this many; then a sample
_SAMPLED_COMBINATIONS = 256


def check_combinations(space: SearchSpace, base: Mapping[str, Any],
                       limit: int = MAX_COMBINATIONS) -> int:
    """Resolve every reachable combination of choices and range ends into a config and check it.

    Per-key checks cannot see values that are only wrong together (SpeeD's tau and a smaller
    ``diffusion.num_timesteps``, ``eval.steps`` and T). Up to ``limit`` combinations every one
    is validated; beyond it, each value of each key once (with the ``when`` it needs) plus a
    seeded random sample. Returns the number of configs checked.
    """
    points = space.probe_points()
    combos = list(itertools.islice(space.cells(lambda key, spec: points[key]), limit + 1))
    if len(combos) > limit:
        combos = list(_covering_cells(space, points))
    seen: set[str] = set()
    for cell in combos:
        key = json.dumps(cell, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            resolve_trial_config(base, cell, space.labels)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in cell.items())
            raise ConfigError(f"config error: search.space combination {{{shown}}}: "
                              f"{str(exc).removeprefix('config error: ')} (narrow the space, or "
                              "add a `when`)") from None
    return len(seen)


def _covering_cells(space: SearchSpace, points: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Each value of each key once (other keys at their first value) plus a random sample."""
    for key, values in points.items():
        needs = _needed_for(space, key)
        for value in values:
            fixed = {**needs, key: value}
            yield next(space.cells(
                lambda k, spec, fixed=fixed: [fixed[k]] if k in fixed else points[k][:1]))
    rng = random.Random(0)
    for _ in range(_SAMPLED_COMBINATIONS):
        yield next(space.cells(lambda k, spec: [rng.choice(points[k])]))


def _needed_for(space: SearchSpace, key: str) -> dict[str, Any]:
    """Values of earlier keys that make ``key``'s ``when`` (and theirs, in turn) hold."""
    needs: dict[str, Any] = {}
    todo = [key]
    while todo:
        for dep, want in space.specs[todo.pop()].when.items():
            if dep not in needs:
                allowed = want if isinstance(want, list) else [want]
                needs[dep] = allowed[0] if allowed else None
                todo.append(dep)
    return needs


def check_points(base: Mapping[str, Any], points: list[dict[str, Any]],
                 labels: tuple[str, ...] | list[str] = ()) -> None:
    for i, point in enumerate(points):
        try:
            resolve_trial_config(base, point, labels)
        except ConfigError as exc:
            raise ConfigError(f"search.points_to_evaluate[{i}]: {exc}") from None
