"""The Ray Tune function trainable: one trial = one ``tsearch.train.train`` run.

The only module that calls ``tune.report``. Each evaluation reports its metrics with the trainer's
checkpoint, so ASHA-paused, failed or moved trials resume from it (``tune.get_checkpoint``).
The trial logs into its own MLflow child run, re-opened on resume.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tsearch import names


def run_trial(config: dict[str, Any], base: dict[str, Any], meta: dict[str, Any]) -> None:
    """Train with the trial's flat dotted ``config`` merged over ``base``; report to Tune."""
    from ray import tune

    from tsearch.search.space import flat_config, resolve_trial_config
    from tsearch.tracking import build_tracker
    from tsearch.train import train
    from tsearch.train.checkpoint import list_checkpoints

    # One "Checkpoint successfully created" INFO line per report is noise in the driver's log.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    config = flat_config(config)
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = resolve_trial_config(base, config, meta.get("labels", ()))
    run_dir = names.trial_run_dir(ctx.get_trial_dir())
    run_id = None
    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = list_checkpoints(d)
            if saved:
                run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
                shutil.copy2(saved[-1], run_dir.checkpoints / saved[-1].name)
                resume = True
            info = Path(d) / names.TRIAL_INFO
            if info.is_file():
                run_id = json.loads(info.read_text()).get(names.REPORT_RUN_ID)
    tracker = build_tracker(
        cfg.tracking, run_name=trial_name, parent_run_id=meta.get("parent_run_id"),
        run_id=run_id,
        tags={names.TAG_KIND: names.KIND_TRIAL, names.TAG_TRIAL_ID: trial_id,
              names.TAG_SEARCH: meta.get("search_name", ""), names.TAG_NODE_IP: _node_ip()},
    )
    if not resume:
        tracker.log_params({names.PARAM_TRIAL: {k: v for k, v in sorted(config.items())}})

    def on_report(metrics: dict[str, float], ckpt_path: Path) -> None:
        with tempfile.TemporaryDirectory() as d:
            shutil.copy2(ckpt_path, Path(d) / ckpt_path.name)
            (Path(d) / names.TRIAL_INFO).write_text(
                json.dumps({names.REPORT_RUN_ID: tracker.run_id}))
            result = {**metrics, names.REPORT_RUN_ID: tracker.run_id,
                      names.REPORT_NODE_IP: _node_ip()}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    train(cfg, tracker=tracker, run_dir=run_dir.path, resume=resume, on_report=on_report,
          log=lambda msg: print(f"[{trial_name}] {msg}", file=sys.stderr, flush=True))


def _node_ip() -> str:
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # outside a Ray worker
        return "127.0.0.1"
