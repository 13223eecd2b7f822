"""The trial record: one trial's values, status and curves, the one shape every layer shares.

Written by ``tsearch.tracking`` (from a trial's MLflow child run) and by the search driver (from
Ray Tune's result grid, once, when a phase ends); read by the report, the confirmation stage and
the CLI. :class:`TrialView` is the record as `tsearch runs show` prints it.

The report's ``Row`` and the confirmation's ``Candidate``/``ConfirmRow`` describe a configuration
over seeds, not a trial, so they stay apart; ``Candidate`` (saved in a search's state file before
its confirmation runs) and ``ConfirmRow`` (``confirmed.json``, after them) stay two: one shape
would change both files. A leaf above the other leaves: imports only names and labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tsearch import labels, names

FAILED = ("FAILED", "ERROR")  # MLflow's and Ray Tune's status of a trial that failed


@dataclass(kw_only=True)
class TrialRecord:
    """One trial, from MLflow or from Tune's result grid.

    Histories are ``(images_seen, value)`` pairs sorted by images seen (MLflow's step; a record
    from Tune keeps one FID per evaluation). ``values`` are the searched values, full dotted
    keys and bundle labels (the ``trial.*`` params); ``config`` the full resolved config (the
    ``config.*`` params; empty from Tune). A listing fills ``latest``; the histories and ``p_t``
    (the sampler's p(t) at each evaluation) are fetched on demand.
    """

    trial_id: str
    run_id: str | None = None  # its MLflow child run; None: it never reported one
    # MLflow's RUNNING, FINISHED, FAILED or KILLED; from Tune's grid its TERMINATED or ERROR.
    status: str = "FINISHED"
    phase: str | None = None  # names.PHASE_*; None from Tune and in stores older than phases
    name: str = ""  # the MLflow run name
    values: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # the run's MLflow tags
    latest: dict[str, float] = field(default_factory=dict)  # each metric's last value
    fid: list[tuple[int, float]] = field(default_factory=list)
    fid_times: list[float] = field(default_factory=list)  # wall clock of each FID (from Tune)
    train_forwards: list[tuple[int, float]] = field(default_factory=list)
    probe_forwards: list[tuple[int, float]] = field(default_factory=list)
    p_t: list[tuple[int, np.ndarray]] = field(default_factory=list)
    node_ip: str | None = None
    error: str | None = None  # the last line of Tune's error
    path: str | None = None  # its Tune trial directory

    @property
    def best_fid(self) -> float:
        """The lowest finite FID of its history (inf: none)."""
        finite = [f for _, f in self.fid if math.isfinite(f)]
        return min(finite) if finite else math.inf

    @property
    def final_fid(self) -> float:
        """Its last FID (NaN: none)."""
        return self.fid[-1][1] if self.fid else math.nan

    @property
    def kimg(self) -> float:
        """Training at its last FID evaluation, in kimg (0: none)."""
        return self.fid[-1][0] / 1000 if self.fid else 0.0

    @property
    def fid_by_kimg(self) -> list[tuple[float, float]]:
        """Its FID history as ``(kimg, FID)`` pairs, for plots and tables in kimg."""
        return [(images / 1000, fid) for images, fid in self.fid]

    @property
    def pt_collapsed_kimg(self) -> float | None:
        """Where its learned p(t) collapsed (the trainer's tag), None if it never did."""
        tagged = self.tags.get(names.TAG_PT_COLLAPSED)
        try:
            return float(tagged) if tagged else None
        except ValueError:  # a tag edited by hand
            return None

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    @property
    def end_reason(self) -> str | None:
        """Why its MLflow run ended (None: it has not).

        Its ``tsearch.end_reason`` tag, else (a store from before the tag, a driver that died)
        what its status, failure reason and training progress against its budget say.
        """
        tagged = self.tags.get(names.TAG_END_REASON)
        if tagged:
            return tagged
        why = self.tags.get(names.TAG_FAILURE_REASON)
        if self.status == "FAILED":
            return names.failed_with(why or "no reason recorded")
        if self.status == "KILLED":
            return "killed" + (f": {why}" if why else "")
        if self.status != "FINISHED":
            return None
        kimg = self.latest.get(names.PROGRESS_KIMG)
        total = self.config.get(names.TOTAL_KIMG_KEY)
        if kimg is not None and isinstance(total, int | float) and kimg < total - 1e-9:
            return names.stopped_at(kimg, asha=False)
        return names.END_FINISHED


def end_kind(reason: str | None) -> str:
    """An end reason's kind: finished, stopped, failed, killed, or running (None)."""
    return "running" if reason is None else reason.split(":")[0].split()[0]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(kw_only=True)
class TrialView:
    """One trial as `tsearch runs show` prints it, and with ``--json`` gives it to scripts."""

    run_id: str
    name: str
    trial_id: str
    phase: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED or KILLED
    end_reason: str | None  # finished, stopped ..., failed: ...; None while it runs
    kimg: float | None  # training reached (progress/kimg)
    best_fid: float | None
    last_fid: float | None
    probe_forwards: float | None  # compute spent on the sampler's probes, in forward passes
    train_forwards: float | None
    values: dict[str, Any]  # the searched values (trial.* params), full keys
    label: str  # the values as run names spell them (tsearch.labels)
    eval_share: float | None = None  # of the trial's wall time, at its last evaluation
    overhead_share: float | None = None
    pt_collapsed_kimg: float | None = None  # its learned p(t) collapsed here (None: never)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def trial_views(records: list[TrialRecord]) -> list[TrialView]:
    """A search's trial records (with FID histories) as `tsearch runs show` lists them: search
    phase before confirmation, best FID first."""
    keys = list(dict.fromkeys(k for r in records for k in r.values))
    out = []
    for r in records:
        m = r.latest
        out.append(TrialView(
            run_id=r.run_id or "", name=r.name, trial_id=r.trial_id,
            phase=r.phase or names.PHASE_SEARCH, status=r.status, end_reason=r.end_reason,
            kimg=_finite(m.get(names.PROGRESS_KIMG)), best_fid=_finite(r.best_fid),
            last_fid=_finite(m.get(names.FID)),
            probe_forwards=_finite(m.get(names.PROBE_FORWARDS)),
            train_forwards=_finite(m.get(names.TRAIN_FORWARDS)), values=r.values,
            # Bundle labels (method) are the searched keys that are not config fields.
            label=labels.trial_name(r.values, [k for k in r.values if "." not in k],
                                    str(r.config.get(labels.SAMPLER_KEY, labels.DEFAULT_SAMPLER)),
                                    keys),
            eval_share=_finite(m.get(names.PERF_EVAL_SHARE)),
            overhead_share=_finite(m.get(names.PERF_OVERHEAD_SHARE)),
            pt_collapsed_kimg=r.pt_collapsed_kimg))
    order = (names.PHASE_SEARCH, names.PHASE_CONFIRM)
    return sorted(out, key=lambda t: (order.index(t.phase) if t.phase in order else len(order),
                                      t.best_fid if t.best_fid is not None else math.inf))
