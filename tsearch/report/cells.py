"""Which trials of a report form a cell, and what its row is called.

A *cell* is a configuration: the trials whose searched values agree but for the seed. Its row is
labelled by its bundle label (``method``), else by the values that vary between cells, spelt as
run names spell them (:mod:`tsearch.labels`); rows of one block that still read the same get the
values that tell them apart. Rows are grouped per noise schedule (a *block*).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tsearch import labels, names
from tsearch.records import TrialRecord

if TYPE_CHECKING:
    from tsearch.report.analysis import EvalStat, TargetStat

# p(t) * T moving by more than this between snapshots counts as a learned (changing) p(t).
LEARNED_TOLERANCE = 1e-3


@dataclass
class Row:
    """One cell of a block: its seeds' trials and their statistics."""

    label: str
    values: dict[str, Any]
    trials: list[TrialRecord]
    seeds: list[Any]
    evals: list[EvalStat | None] = field(default_factory=list)  # one per block column
    target: TargetStat | None = None
    learned: bool = False  # p(t) changes over training: gets a heatmap

    @property
    def n(self) -> int:
        return len(self.trials)


def value_key(value: Any) -> str:
    """A value (or values) as one comparable string: equal values, equal keys."""
    return json.dumps(value, sort_keys=True, default=str)


def _seed_sort(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def schedule_of(record: TrialRecord) -> str:
    """A trial's noise schedule (its block), searched or fixed by its config."""
    return str(record.config.get(names.SCHEDULE_KEY,
                                 record.values.get(names.SCHEDULE_KEY, "unknown")))


def group_cells(records: Sequence[TrialRecord], seed_key: str = labels.SEED_KEY
                ) -> list[tuple[dict[str, Any], list[TrialRecord]]]:
    """Trials grouped by their searched values minus ``seed_key``, in order of first trial.

    A trial whose values lack ``seed_key`` is a cell of its own (n = 1). Trials on different
    noise schedules never share a cell, searched or not: searches of two processes with the
    same method labels are merged into one report.
    """
    cells: dict[str, tuple[dict[str, Any], list[TrialRecord]]] = {}
    for record in records:
        if seed_key in record.values:
            values = {k: v for k, v in record.values.items() if k != seed_key}
            key = f"{schedule_of(record)}|{value_key(values)}"
        else:
            values, key = dict(record.values), f"trial:{record.run_id}"
        cells.setdefault(key, (values, []))[1].append(record)
    for _, trials in cells.values():
        trials.sort(key=lambda r: _seed_sort(r.values.get(seed_key)))
    return list(cells.values())


def _labels(cells: list[tuple[dict[str, Any], list[TrialRecord]]]) -> list[str]:
    """Row labels: the ``method`` bundle label, else the sampler and the varying values, else
    the trial id."""
    rest = [{k: v for k, v in values.items() if k != names.SCHEDULE_KEY} for values, _ in cells]
    keys = sorted({k for values in rest for k in values})
    varying = [k for k in keys
               if len({value_key(values.get(k, "\0missing")) for values in rest}) > 1]
    out = []
    for values, (_, trials) in zip(rest, cells, strict=True):
        sampler = str(values.get(labels.SAMPLER_KEY, trials[0].config.get(
            labels.SAMPLER_KEY, labels.DEFAULT_SAMPLER)))
        shown = {k: values[k] for k in varying if k in values} or values
        if names.METHOD_KEY in values:
            out.append(str(values[names.METHOD_KEY]))
        elif shown:
            out.append(labels.describe(shown, sampler=sampler, keys=keys))
        else:
            out.append(trials[0].trial_id if len(trials) == 1 else "all trials")
    return out


def _disambiguate(rows: list[Row]) -> None:
    """Rows of one block with the same label get the values that tell them apart."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for r in same for k in r.values
                       if k not in (names.METHOD_KEY, names.SCHEDULE_KEY)})
        differ = [k for k in keys if len({value_key(r.values.get(k)) for r in same}) > 1]
        for row in same:
            shown = {k: row.values[k] for k in differ if k in row.values}
            extra = " ".join(labels.pairs(shown, differ).values()) or row.trials[0].trial_id
            row.label = f"{row.label} ({extra})"


def is_learned(record: TrialRecord) -> bool:
    """Whether a trial's p(t) changed over training (the adaptive sampler's always may)."""
    if record.config.get(labels.SAMPLER_KEY) == "adaptive":
        return bool(record.p_t)
    if len(record.p_t) < 2:
        return False
    probs = np.stack([np.asarray(p, dtype=np.float64) for _, p in record.p_t])
    return bool(np.max(np.abs(probs - probs[0])) * probs.shape[1] > LEARNED_TOLERANCE)


def rows_by_block(records: Sequence[TrialRecord], seed_key: str) -> dict[str, list[Row]]:
    """Cells as labelled rows, per noise schedule; labels need only the trials' values."""
    cells = group_cells(records, seed_key)
    by_block: dict[str, list[Row]] = {}
    for (values, trials), label in zip(cells, _labels(cells), strict=True):
        row = Row(label=label, values=values, trials=trials,
                  seeds=[t.values.get(seed_key, t.config.get(seed_key)) for t in trials],
                  learned=is_learned(trials[0]))
        by_block.setdefault(schedule_of(trials[0]), []).append(row)
    for rows in by_block.values():
        _disambiguate(rows)
    return by_block
