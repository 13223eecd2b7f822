"""Search spaces in YAML, turned into an Optuna define-by-run function.

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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tsearch.config import Config, validate_config
from tsearch.errors import ConfigError
from tsearch.timesteps import SAMPLERS, WEIGHTINGS, check_config

_PLUGIN_KEYS = {"timesteps.sampler": SAMPLERS, "timesteps.weighting": WEIGHTINGS}


class ParamSpec(BaseModel):
    """One searched parameter: exactly one of ``float``, ``int`` or ``choice``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    float_range: tuple[float, float] | None = Field(None, alias="float")
    int_range: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, Any] = Field(default_factory=dict)  # key -> value or list of values

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [k for k in ("float_range", "int_range", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [lo, hi], int: [lo, hi], choice: [...]")
        rng = self.float_range or self.int_range
        if rng is not None and not rng[0] < rng[1]:
            raise ValueError(f"range {list(rng)} must have lo < hi")
        if rng is not None and self.log and rng[0] <= 0:
            raise ValueError(f"log scale needs a positive range, got {list(rng)}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice must list at least one value")
        return self

    def active(self, chosen: Mapping[str, Any]) -> bool:
        for key, want in self.when.items():
            allowed = want if isinstance(want, list) else [want]
            if key not in chosen or chosen[key] not in allowed:
                return False
        return True

    def values(self) -> list[Any] | None:
        return list(self.choice) if self.choice is not None else None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def merge_flat(base: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the base config dict with each dotted key of ``flat`` set."""
    raw = copy.deepcopy(dict(base))
    for key, value in flat.items():
        set_dotted(raw, key, value)
    return raw


def _config_field_exists(key: str) -> bool:
    cls: Any = Config
    for part in key.split("."):
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return False
        cls = fields[part].annotation
    return True


class DefineByRun:
    """Optuna define-by-run space; a module-level class so the searcher state can be pickled."""

    def __init__(self, specs: dict[str, ParamSpec]):
        self.specs = specs

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for key, spec in self.specs.items():
            if not spec.active(chosen):
                continue
            if spec.choice is not None:
                chosen[key] = trial.suggest_categorical(key, spec.choice)
            elif spec.float_range is not None:
                lo, hi = spec.float_range
                chosen[key] = trial.suggest_float(key, lo, hi, log=spec.log,
                                                  step=None if spec.log else spec.step)
            else:
                lo, hi = spec.int_range
                chosen[key] = trial.suggest_int(key, lo, hi, log=spec.log,
                                                step=int(spec.step or 1))
        return None


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

    def _check_keys(self, cfg: Config) -> None:
        for key, spec in self.specs.items():
            plugin = next((p for p in _PLUGIN_KEYS if key.startswith(p + ".params.")), None)
            if plugin is None:
                if not _config_field_exists(key):
                    raise ConfigError(f"config error: search.space.{key}: not a config field "
                                      "(see `tsearch train CONFIG --dry-run` for the fields)")
                if key in ("timesteps.sampler.name", "timesteps.weighting.name"):
                    registry = _PLUGIN_KEYS[key.rsplit(".", 1)[0]]
                    bad = [v for v in spec.values() or [] if v not in registry]
                    if bad or spec.choice is None:
                        raise ConfigError(
                            f"config error: search.space.{key}: choose among "
                            f"{', '.join(sorted(registry))}, got {bad or 'a numeric range'}")
                continue
            param = key[len(plugin) + len(".params."):]
            for name in self._plugin_names(plugin, spec, cfg):
                fields = _PLUGIN_KEYS[plugin][name].Params.model_fields
                if param not in fields:
                    raise ConfigError(
                        f"config error: search.space.{key}: {name!r} has no hyperparameter "
                        f"{param!r}; it accepts {', '.join(sorted(fields)) or '(none)'}")

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

    def describe(self) -> list[str]:
        lines = []
        for key, spec in self.specs.items():
            if spec.choice is not None:
                dist = f"choice {spec.choice}"
            else:
                rng = spec.float_range or spec.int_range
                kind = "float" if spec.float_range else "int"
                dist = f"{kind} [{rng[0]:g}, {rng[1]:g}]" + (" log" if spec.log else "")
            cond = ("  when " + ", ".join(f"{k}={v}" for k, v in spec.when.items())
                    if spec.when else "")
            lines.append(f"{key}: {dist}{cond}")
        return lines


def resolve_trial_config(base: Mapping[str, Any], flat: Mapping[str, Any]) -> Config:
    """A trial's flat dotted values over the base config, fully validated."""
    cfg = validate_config(merge_flat(base, flat))
    check_config(cfg)
    return cfg


def check_points(base: Mapping[str, Any], points: list[dict[str, Any]]) -> None:
    for i, point in enumerate(points):
        try:
            resolve_trial_config(base, point)
        except ConfigError as exc:
            raise ConfigError(f"search.points_to_evaluate[{i}]: {exc}") from None
