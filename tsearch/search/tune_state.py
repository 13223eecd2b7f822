"""Tune's experiment state on disk: resume after a killed driver, and checkpoint surgery.

Ray writes a search's state (experiment state, searcher and search-generator pickles)
atomically into the driver's staging directory inside its session folder, then copies it into
``search.storage_path`` with a plain copy. A driver killed during that copy leaves a file cut
short there, and ``Tuner.restore`` then logs "Failed to restore the run state" and starts the
search again from nothing, beside the trials it already ran. So a resume first checks every
state file and, for one cut short, puts back the killed driver's own staging copy (its session
folder outlives a SIGKILL); without one it stops in one line instead of starting over.

Around it: checkpoint directories a restore needs or no longer needs, the state of a search that
never started a trial, and the search's own state file (its parent run, the confirmation's
candidates).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import shutil
from pathlib import Path
from typing import Any

from tsearch import names
from tsearch.errors import TsearchError
from tsearch.log import get_logger

log = get_logger(__name__)

STATE_FILES = ("tuner.pkl", "experiment_state-*.json", "searcher-state-*.pkl",
               "search_gen_state-*.json", "basic-variant-state-*.json")
RAY_STATE = (*STATE_FILES, ".validate_storage_marker")  # what Tune writes for a search
_SESSION = re.compile(r"-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.(?:json|pkl)$")


def intact(path: Path) -> bool:
    """Whether a state file reads to its end (a pickle to STOP, JSON to its last brace).

    Ray names some pickles ``.json``, so the content decides. Pickles are scanned opcode by
    opcode, not loaded: nothing is imported or built from a file we do not trust yet.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:1] == b"\x80":  # pickle protocol 2 or later
        try:
            ops = [op.name for op, _, _ in pickletools.genops(io.BytesIO(data))]
        except Exception:  # cut short: "pickle exhausted before seeing STOP", or garbage
            return False
        return bool(ops) and ops[-1] == "STOP"
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _session(file_name: str) -> str | None:
    """The driver session a state file belongs to (the timestamp Ray puts in its name)."""
    match = _SESSION.search(file_name)
    return match.group(1) if match else None


def broken(exp_path: Path) -> list[Path]:
    """Tune's state files in ``exp_path`` that do not read to their end."""
    return sorted(p for pattern in STATE_FILES for p in exp_path.glob(pattern) if not intact(p))


def _staged(ray_temp: Path, rel: str) -> list[Path]:
    """Driver staging directories of experiment ``rel`` in every session under ``ray_temp``."""
    return sorted(ray_temp.glob(f"session_*/artifacts/*/{rel}/driver_artifacts"))


def mend(exp_path: Path, rel: str, ray_temp: Path | None,
         search_name: str) -> tuple[list[str], list[str]]:
    """Put back intact copies of the state files a killed driver cut short.

    Returns the names of the files found cut short and of every file put back.

    ``rel`` is the experiment's path under the storage root (``NAME`` or ``NAME/confirm``). A
    broken file is replaced, with the other files of the same driver session (the set one save
    wrote together), from the newest staging directory that holds it intact. Raises
    :class:`TsearchError` when a broken file has no intact copy: resuming then would start the
    search over.
    """
    bad = broken(exp_path) if exp_path.is_dir() else []
    if not bad:
        return [], []
    staged = _staged(ray_temp, rel) if ray_temp is not None and ray_temp.is_dir() else []
    mended: list[str] = []
    for path in bad:
        sources = [d for d in staged if intact(d / path.name)]
        if not sources:
            where = f" in {ray_temp}" if ray_temp is not None else ""
            raise TsearchError(
                f"cannot resume {exp_path}: Ray's state file {path.name} was cut short (its "
                f"driver was killed while Ray copied it) and no intact copy is left{where}; the "
                "finished trials are in MLflow: start a new search from them with `tsearch "
                f"search CONFIG --warm-start {search_name} --set search.name=NEW_NAME`")
        source = max(sources, key=lambda d: (d / path.name).stat().st_mtime)
        session = _session(path.name)
        together = [p for p in source.iterdir()
                    if session is not None and _session(p.name) == session
                    and any(p.match(pat) for pat in STATE_FILES) and intact(p)]
        for src in together or [source / path.name]:
            tmp = exp_path / f".{src.name}.mend"
            shutil.copyfile(src, tmp)
            tmp.replace(exp_path / src.name)
            mended.append(src.name)
    return [p.name for p in bad], sorted(set(mended))


def mend_state(exp_path: Path, rel: str, search_name: str) -> None:
    """Before a restore: put back Tune state files a killed driver cut short (:func:`mend`)."""
    from tsearch.search.ray_runtime import ray_temp_root

    cut, mended = mend(exp_path, rel, ray_temp_root(), search_name)
    if cut:
        others = [m for m in mended if m not in cut]
        log.info(f"Ray's copy of {', '.join(cut)} was cut short when its driver was killed; "
                 "put back the driver's own intact copy"
                 + (f" (with {', '.join(others)}, saved with it)" if others else ""))


def stub_pruned_checkpoints(exp_path: Path) -> None:
    """Recreate, empty, the checkpoint directories Tune pruned after its last state snapshot.

    A driver killed between snapshots leaves Tune's state naming a checkpoint that a newer
    report made it delete; restoring the trial would then fail. An empty directory lets Tune
    restore it, and the trial itself resumes from the newest checkpoint in the storage
    (``trainable._restore``). Local storage only: a bucket is left as it is.
    """
    for trial in trial_dirs(exp_path):
        indices = sorted(int(p.name.split("_")[1]) for p in trial.glob("checkpoint_*")
                         if p.name.split("_")[1].isdigit())
        for i in range(indices[-1] if indices else 0):
            (trial / f"checkpoint_{i:06d}").mkdir(exist_ok=True)


def prune_checkpoints(exp_path: Path, keep: int) -> None:
    """Leave each trial its ``keep`` newest checkpoints, and no empty stub.

    Tune prunes as results arrive; a driver killed in between leaves older checkpoints that the
    resumed driver no longer tracks. Once the search has ended, none of them is needed.
    """
    for trial in trial_dirs(exp_path):
        found = sorted((p for p in trial.glob("checkpoint_*") if p.is_dir()),
                       key=lambda p: p.name)
        full = [p for p in found if any(p.iterdir())]
        for path in [p for p in found if p not in full] + full[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def trial_dirs(exp_path: Path) -> list[Path]:
    """Trial directories Tune created (each holds params.json once its trial started)."""
    if not exp_path.is_dir():
        return []
    return [p for p in exp_path.iterdir() if (p / "params.json").is_file()]


def forget_start(exp_path: Path) -> None:
    """Delete Tune's state of a search that failed before any trial ran.

    Left in place it would block the name (``already exists``) and make ``--resume`` restore a
    search with nothing to resume.
    """
    for pattern in (*RAY_STATE, names.SEARCH_STATE):
        for path in exp_path.glob(pattern):
            path.unlink(missing_ok=True)
    try:
        exp_path.rmdir()
    except OSError:
        pass  # something else lives there: keep it


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the search's state file atomically: a kill mid-write must not lose the parent."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)
