"""Validating a raw config dict into a Config, with pydantic's report as one line.

A config error is one line naming the field, the bad value and what is allowed (the CLI
prints it and exits 2); the plugin resolver types the sampler's and weighting's params.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from tsearch.config.components import ParamsResolver, validation_context
from tsearch.config.schema import Config
from tsearch.errors import ConfigError


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


def validate_config(raw: Mapping[str, Any], *, params: ParamsResolver) -> Config:
    """Build a Config, turning pydantic's multi-line report into one ConfigError line.

    ``params`` types each plugin section's params (``tsearch.timesteps.resolve_params``).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"config error: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return Config.model_validate(dict(raw), context=validation_context(params))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None

