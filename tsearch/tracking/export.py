"""`tsearch export best`: the answer of a search as a YAML file that runs anywhere.

A search's parent run holds the search phase's best trial (``best_config.yaml``, one seed, the
minimum of many noisy trials) and, after a confirmation stage, the confirmed winner
(``confirmed_config.yaml``, mean over fresh seeds). The confirmed winner is the search's answer,
so it is exported unless asked otherwise. The file is rebuilt, not copied: a header saying what
it is, then the config passed through :func:`~tsearch.config.portable_dict` again, so that an
older store's file (absolute cache and store paths, one thread per trial) exports clean too.
Reading only: nothing is created in the store.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tsearch import names
from tsearch.config import portable_dict, portable_overlay
from tsearch.errors import TsearchError
from tsearch.tracking.fetch import download, has_artifact
from tsearch.tracking.queries import SearchRun, find_search, parse_param


@dataclass
class ExportedConfig:
    """What `tsearch export best` writes and prints."""

    text: str  # the YAML file: comment header, then the config (or overlay) mapping
    summary: str  # one line describing it, for the terminal
    note: str | None  # set when the default export is not a confirmed winner: why
    confirmed: bool
    parent: SearchRun


def _one_line(value: Any) -> str:
    """A tag or name fit for a comment line (a newline in it would end the comment)."""
    return " ".join(str(value).split())


def _fid(value: float | None) -> str:
    return f"{value:.2f}" if value is not None and math.isfinite(value) else "not recorded"


def _confirm_seeds(parent: SearchRun) -> int | None:
    """How many confirmation seeds the search used, from its logged ``search`` params."""
    seeds = parse_param(parent.params.get(f"{names.PARAM_SEARCH}.confirm.seeds", ""))
    return len(seeds) if isinstance(seeds, list) and seeds else None


def _confirm_enabled(parent: SearchRun) -> bool:
    return parse_param(parent.params.get(f"{names.PARAM_SEARCH}.confirm.enabled", "")) is True


def _read_config(text: str, artifact: str, run_id: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    if not isinstance(raw, dict):
        raise TsearchError(f"artifact {artifact!r} of run {run_id} is not a YAML config mapping; "
                           "the store is damaged, or export --unconfirmed")
    return json.loads(json.dumps(raw, default=str))  # a date-like value stays a string


def _header(parent: SearchRun, confirmed: bool, sections: Sequence[str] | None) -> list[str]:
    search = _one_line(parent.tags.get(names.TAG_SEARCH) or parent.name)
    if confirmed:
        label = _one_line(parent.tags.get(names.TAG_CONFIRMED, "")) or "(no label recorded)"
        mean = parent.metrics.get(names.CONFIRM_FID_MEAN)
        std = parent.metrics.get(names.CONFIRM_FID_STD)
        seeds = _confirm_seeds(parent)
        spread = f" ± {_fid(std)}" if std is not None and math.isfinite(std) else ""
        over = f"mean ± std over {seeds} fresh seeds" if seeds else "mean over fresh seeds"
        verdict = _one_line(parent.tags.get(names.TAG_CONFIRM_VERDICT, ""))
        what = "leader (a tie)" if verdict.startswith("tie:") else "winner"
        lines = [f"# Confirmed {what} of search {search!r}: {label}, FID {_fid(mean)}{spread}",
                 f"# ({over}: retrained from scratch at the full budget on seeds no search",
                 f"# trial used). MLflow parent run {parent.run_id}."]
        lines += [f"# {verdict}"] if verdict else []
    else:
        lines = [f"# Unconfirmed best trial of search {search!r}: FID {_fid(parent.best_fid)} on "
                 "the one seed it was searched with.",
                 "# The best of many noisy trials flatters itself; a confirmation stage "
                 "retrains on fresh seeds.",
                 f"# MLflow parent run {parent.run_id}."]
    if sections:
        lines += [f"# Overlay of section(s) {', '.join(sections)} only; apply it to a base config:",
                  "#   tsearch train BASE.yaml --overlay THIS_FILE",
                  '#   tsearch.timesteps.from_config("BASE.yaml", overlay="THIS_FILE")']
    else:
        lines += ["# Train it alone: tsearch train THIS_FILE",
                  '# In your own loop: tsearch.timesteps.from_config("THIS_FILE")']
    return lines


def export_best(uri: str, ref: str | None, *, unconfirmed: bool = False,
                sections: Sequence[str] | None = None) -> ExportedConfig:
    """The confirmed winner of search ``ref`` (else, or with ``unconfirmed``, its best trial).

    Args:
        uri: the MLflow tracking store (read only).
        ref: search name or parent run id; None: the newest search.
        unconfirmed: export the search phase's best trial even when a confirmed winner exists.
        sections: write only these config sections, as an overlay for another base config
            (checked by the caller with :func:`tsearch.config.parse_sections`).
    """
    parent = find_search(uri, ref)
    confirmed = not unconfirmed and has_artifact(uri, parent.run_id,
                                                 names.ARTIFACT_CONFIRMED_CONFIG)
    artifact = names.ARTIFACT_CONFIRMED_CONFIG if confirmed else names.ARTIFACT_BEST_CONFIG
    with tempfile.TemporaryDirectory(prefix="tsearch-export-") as tmp:
        text = download(uri, parent.run_id, artifact, tmp).read_text(encoding="utf-8",
                                                                     errors="replace")
    raw = _read_config(text, artifact, parent.run_id)
    body = portable_overlay(raw, sections) if sections else portable_dict(raw)
    if sections and not body:
        raise TsearchError(f"{artifact} of search {parent.name} holds none of the sections "
                           f"{', '.join(sections)}; it has {', '.join(raw) or 'none'}")
    header = "\n".join(_header(parent, confirmed, sections)) + "\n"
    what = "overlay" if sections else "config"
    if confirmed:
        seeds = _confirm_seeds(parent)
        std = parent.metrics.get(names.CONFIRM_FID_STD)
        summary = (f"confirmed winner of search {parent.name} "
                   f"({_one_line(parent.tags.get(names.TAG_CONFIRMED, ''))}, FID "
                   f"{_fid(parent.metrics.get(names.CONFIRM_FID_MEAN))}"
                   + (f" ± {_fid(std)}" if std is not None and math.isfinite(std) else "")
                   + (f" over {seeds} seeds" if seeds else "") + f"), {what}")
    else:
        summary = (f"best {what} of search {parent.name} (FID {_fid(parent.best_fid)}, "
                   "unconfirmed)")
    note = None
    if not confirmed and not unconfirmed:
        if _confirm_enabled(parent):
            note = (f"note: the confirmation stage of search {parent.name} has not finished, so "
                    "this is its unconfirmed best trial; `tsearch search CONFIG --resume` "
                    "completes it")
        else:
            note = (f"note: search {parent.name} has no confirmation stage, so this is its "
                    "unconfirmed best trial (one seed); search.confirm.enabled: true retrains "
                    "the top configurations on fresh seeds")
    return ExportedConfig(text=header + yaml.safe_dump(body, sort_keys=False), summary=summary,
                          note=note, confirmed=confirmed, parent=parent)
