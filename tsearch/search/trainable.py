"""The Ray Tune function trainable: one trial = one ``tsearch.train.train`` run.

The only module that calls ``tune.report``. Each evaluation reports its metrics with the trainer's
checkpoint, so ASHA-paused, failed or moved trials resume from it. The trial logs into its own
MLflow child run, re-opened on resume.

Where a trial writes, so that a search's disk stays bounded and nothing is lost:

- model checkpoints exist only as Tune checkpoints in the search's storage (Tune keeps
  ``search.num_to_keep``); the trainer writes each into a scratch directory that is emptied as
  soon as Tune has its copy;
- the run directory (metrics.jsonl, timesteps.npz, plots) is written straight into the trial's
  directory in the storage when that is a local (or mounted) filesystem, never into Ray's
  session directory, which the driver would copy into the storage without ever deleting;
- the last report of a trial that trained to the end says so in its checkpoint, which reaches
  the storage before ``tune.report`` returns. A resumed search may restore such a trial from an
  older checkpoint (its driver died before recording the newer one): the trial then reports its
  final result again instead of training a second time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsearch import labels, names
from tsearch.log import get_logger, prefixed

if TYPE_CHECKING:
    from tsearch.search.phase import TrialMeta

log = get_logger(__name__)
DISK_METRIC = "disk/trial_mb"  # what this trial holds in the search's storage


def run_trial(config: dict[str, Any], base: dict[str, Any], meta: TrialMeta) -> None:
    """Train with the trial's flat dotted ``config`` merged over ``base``; report to Tune."""
    started = time.perf_counter()  # the trial's own set-up counts in its perf/overhead_share
    # With search.reuse_actors, Tune hands this process the next trial only after this one's
    # thread ends, and waits TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for it; a trial
    # stopped by ASHA still closes its MLflow run (a slow store: seconds). A missed wait errors
    # the next trial, and Ray 2.60's search then hangs (seen with the timeout at 0), so the
    # wait is generous.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(_THREAD_TIMEOUT_S))
    from ray import tune

    from tsearch.search.console import configure_trial
    from tsearch.search.space import flat_config, resolve_trial_config
    from tsearch.tracker import resilient
    from tsearch.tracking import build_tracker
    from tsearch.train import RunStopped, train
    from tsearch.train.rundir import previous_run_id

    configure_trial(meta.verbose)
    config = flat_config(config)
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()

    cfg = resolve_trial_config(base, config, meta.labels)
    trial_path = _storage_trial_dir(ctx)
    run_dir = names.trial_run_dir(trial_path or ctx.get_trial_dir())
    scratch = Path(tempfile.mkdtemp(prefix=f"tsearch-ckpt-{trial_id}-", dir=_scratch_root()))
    with prefixed(f"[{trial_name}] "):  # every line of the trial names it: ours, the
        # trainer's and the tracker's
        try:
            info = _restore(ctx, tune.get_checkpoint(), scratch)
            if info.get(_FINISHED):
                kimg = info[_FINISHED].get(names.TIME_ATTR)
                log.info(f"already trained to the end ({kimg} kimg); "
                         "reporting its final result again")
                tune.report(info[_FINISHED])
                return
            resume = any(scratch.iterdir())
            tracker = resilient(build_tracker(
                cfg.tracking, parent_run_id=meta.parent_run_id,
                run_name=labels.trial_name(config, meta.labels, cfg.timesteps.sampler.name,
                                           meta.keys),
                run_id=info.get(names.REPORT_RUN_ID) or previous_run_id(run_dir.path),
                tags={names.TAG_KIND: names.KIND_TRIAL, names.TAG_TRIAL_ID: trial_id,
                      names.TAG_SEARCH: meta.search_name, names.TAG_NODE_IP: _node_ip(),
                      names.TAG_WORKER_PID: str(os.getpid()), names.TAG_PHASE: meta.phase},
            ), log.warning)
            if not resume:  # the values under their short names too: the run table's columns
                tracker.log_params({names.PARAM_TRIAL: {k: v for k, v in sorted(config.items())},
                                    **labels.plain_params(config, meta.keys, _TOP_LEVEL_PARAMS)})
            total_images = int(round(cfg.train.total_kimg * 1000))

            def on_report(metrics: dict[str, float], ckpt_path: Path) -> None:
                result = {**metrics, names.REPORT_RUN_ID: tracker.run_id,
                          names.REPORT_NODE_IP: _node_ip()}
                finished = int(round(metrics[names.TIME_ATTR] * 1000)) >= total_images
                with tempfile.TemporaryDirectory(prefix="tsearch-report-") as d:
                    shutil.move(ckpt_path, Path(d) / ckpt_path.name)
                    trial_info = {names.REPORT_RUN_ID: tracker.run_id,
                                  _FINISHED: result if finished else None}
                    (Path(d) / names.TRIAL_INFO).write_text(json.dumps(trial_info))
                    try:
                        tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
                    except SystemExit:  # Tune stopped the trial (see run_trial's except)
                        raise RunStopped from None
                if trial_path is not None:  # what the trial holds now (Tune prunes old ones soon)
                    tracker.log_metrics({DISK_METRIC: _bytes_under(trial_path) / 2**20},
                                        step=int(round(metrics[names.TIME_ATTR] * 1000)))

            train(cfg, tracker=tracker, run_dir=run_dir.path, resume=resume,
                  on_report=on_report, checkpoint_dir=scratch, keep_checkpoints=2,
                  started=started, summary=False)
        except RunStopped:
            # Stopped by the scheduler (ASHA at a rung, or at max_t at the last report): Tune's
            # tune.report raised SystemExit for that, and this thread must end the same way (a
            # return would report again and block). Tune does not wait for it unless it reuses the
            # process, so the driver draws the plots (trial_plots.complete_plots).
            raise SystemExit(0) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


_TOP_LEVEL_PARAMS = (names.PARAM_CONFIG, names.PARAM_TRIAL, names.PARAM_MODEL_SIZE,
                     names.PARAM_DEVICE)  # what a trial run logs besides its values
_THREAD_TIMEOUT_S = 600  # how long a stopped trial may take to close before its actor is reused
_FINISHED = "finished"  # in TRIAL_INFO: the final report of a trial that trained to the end


def _scratch_root() -> str | None:
    """Ray's session directory on this node: a trial stopped by ASHA is killed before its
    ``finally`` runs, and the session directory goes when its Ray does."""
    import ray

    try:
        root = Path(ray._private.worker._global_node.get_session_dir_path()) / "tsearch-scratch"
        root.mkdir(exist_ok=True)
        return str(root)
    except (AttributeError, OSError):  # a Ray without this private API: the temp directory
        return None


def _storage_trial_dir(ctx: Any) -> Path | None:
    """The trial's directory in the search's storage, if this node can write it as a path."""
    import pyarrow.fs

    try:
        storage = ctx.get_storage()
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            path = Path(storage.trial_fs_path)
            path.mkdir(parents=True, exist_ok=True)
            return path
    except (AttributeError, RuntimeError, OSError):
        pass
    return None


def _restore(ctx: Any, checkpoint: Any, scratch: Path) -> dict[str, Any]:
    """Copy the trial's saved model checkpoints into ``scratch``; return its newest trial info.

    Tune hands back the checkpoint its experiment state recorded, which lags behind the storage
    when the driver died between a report and its next state snapshot; the storage's newest
    checkpoints are used then. Every kept checkpoint is copied, so a corrupt newest file falls
    back to the previous one.
    """
    found = _stored_checkpoints(ctx)
    if not found and checkpoint is not None:
        found = [checkpoint]
    info: dict[str, Any] = {}
    for ckpt in found:  # oldest first: the newest readable info wins
        try:
            with ckpt.as_directory() as d:
                for pt in Path(d).glob("ckpt-*.pt"):
                    shutil.copy2(pt, scratch / pt.name)
                info_file = Path(d) / names.TRIAL_INFO
                if info_file.is_file():
                    info = json.loads(info_file.read_text())
        except (OSError, ValueError):  # a half-written checkpoint: use the others
            continue
    return info


def _stored_checkpoints(ctx: Any) -> list[Any]:
    """The trial's Tune checkpoints in the storage, oldest first."""
    from ray import tune

    try:
        storage = ctx.get_storage()
        fs, trial = storage.storage_filesystem, storage.trial_fs_path
        import pyarrow.fs

        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial, allow_not_found=True))
    except (AttributeError, RuntimeError, OSError):
        return []
    dirs = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and os.path.basename(i.path).startswith("checkpoint_"))
    return [tune.Checkpoint(path=p, filesystem=fs) for p in dirs]


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _node_ip() -> str:
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # outside a Ray worker
        return "127.0.0.1"
