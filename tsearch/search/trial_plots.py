"""The plots of trials that ended without drawing them, drawn by the search's driver.

Imports no Ray: the driver's callbacks (``callbacks``) call :func:`complete_plots` for each
trial Tune ends, and each phase's end (:func:`complete_phase_plots`) for all of its trials.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsearch import labels, names
from tsearch.log import get_logger
from tsearch.records import TrialRecord

log = get_logger(__name__)


def complete_phase_plots(trials: Sequence[TrialRecord], base: Mapping[str, Any],
                         uri: str) -> None:
    """Every trial's plots, after its phase: the callbacks drew those of trials Tune stopped;
    this catches trials that ended under an earlier driver (``--resume``)."""
    sampler = base["timesteps"]["sampler"]["name"]
    for t in trials:
        complete_plots(t.path, t.run_id, uri, t.values.get(labels.SAMPLER_KEY, sampler))


def complete_plots(trial_dir: str | None, run_id: str | None, uri: str,
                   sampler: str) -> list[str]:
    """Draw the plots a trial's MLflow run lacks and log them there; returns their names.

    A trial that Tune stops (ASHA at a rung, or at ``max_t`` when it trained to the end) is
    told so inside ``tune.report`` and Tune tears its process down right away unless it reuses
    it, so the trial leaves its plots to the driver (``train.RunStopped``). Drawn once, from
    the trial's run directory in the storage, or from its MLflow run when the driver cannot read
    that (a bucket). A run that has its plots costs one artifact listing. Never raises: a
    failure is one warning line, and the search goes on.
    """
    if not run_id:  # never reported: nothing to draw
        return []
    from tsearch.tracking.closing import add_artifacts, artifact_names
    from tsearch.train.rundir import draw_plots_from_files, plot_names

    try:
        run_dir = names.trial_run_dir(trial_dir) if trial_dir else None
        if run_dir is not None and run_dir.config.is_file():
            wanted = plot_names(run_dir.path)
            have = artifact_names(uri, run_id, names.ARTIFACT_PLOTS) if wanted else set()
            missing = [n for n in wanted if n not in have]
            if missing:
                drawn = draw_plots_from_files(run_dir.path)
                add_artifacts(uri, run_id, [p for p in drawn if p.name in missing],
                              names.ARTIFACT_PLOTS)
            return missing
        have = artifact_names(uri, run_id, names.ARTIFACT_PLOTS)
        with tempfile.TemporaryDirectory(prefix="tsearch-plots-") as tmp:
            drawn = _plots_from_mlflow(uri, run_id, sampler, Path(tmp), have)
            add_artifacts(uri, run_id, drawn, names.ARTIFACT_PLOTS)
            return [p.name for p in drawn]
    except Exception as exc:  # a plot is not worth a search
        log.warning(f"  warning: could not add the plots of MLflow run {run_id} "
                    f"({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
        return []


def _plots_from_mlflow(uri: str, run_id: str, sampler: str, out: Path,
                       have: set[str]) -> list[Path]:
    """The p(t) heatmap and FID curve from the run's logged arrays and metrics, if missing."""
    from tsearch.tracking.fetch import fetch_histories
    from tsearch.train.rundir import draw_plots

    run_dir = names.RunDir(out)
    wanted = {run_dir.heatmap.name, run_dir.fid_curve.name} - have
    if not wanted:
        return []
    record = TrialRecord(trial_id="", run_id=run_id)
    fetch_histories(uri, [record])
    pt = ([s / 1000 for s, _ in record.p_t], [a for _, a in record.p_t])
    fids: dict[int, float] = {}
    for step, fid in record.fid:  # a resumed trial may have logged an evaluation twice
        fids.setdefault(step, fid)
    drawn = draw_plots(run_dir, sampler=sampler, weighting="", num_timesteps=1,
                       pt=pt if run_dir.heatmap.name in wanted else None, wt=None,
                       fids=[(s / 1000, f) for s, f in sorted(fids.items())]
                       if run_dir.fid_curve.name in wanted else [])
    return drawn
