"""The search driver's writes to trial runs it did not open: closing a run Tune ended from outside
(and recording why), and adding the plots of trials Tune stopped before they drew them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from tsearch import names
from tsearch.tracker import MAX_TAG_VALUE_LENGTH
from tsearch.tracking.store import all_experiment_ids, retry, write_client


def close_trial_run(uri: str, trial_id: str, status: str, note: str, *,
                    end_reason: str | None = None, parent_run_id: str | None = None) -> None:
    """End a trial's child run that Tune ended from outside (e.g. an ASHA stop); record why.

    ``end_reason`` is set whatever the run's status: a stopped trial may have closed its run
    itself, as FINISHED like a completed one. A FAILED trial keeps the failure reason its run
    recorded. ``parent_run_id`` narrows the trial id to one search (ids are random, not unique).
    """
    from mlflow.entities import RunTag

    client = write_client(uri)
    ids = all_experiment_ids(client)
    query = f"tags.`{names.TAG_TRIAL_ID}` = '{trial_id}'"
    if parent_run_id:
        query += f" and tags.`{names.TAG_PARENT_RUN}` = '{parent_run_id}'"
    for run in client.search_runs(ids, query, max_results=10):
        tags = {}
        if end_reason is not None:
            failure = run.data.tags.get(names.TAG_FAILURE_REASON)
            reason = names.failed_with(failure) if status == "FAILED" and failure else end_reason
            tags[names.TAG_END_REASON] = reason[:MAX_TAG_VALUE_LENGTH]
        if run.info.status == "RUNNING":
            tags[names.TAG_ENDED_BY] = note
        run_id = run.info.run_id
        if tags:
            retry(partial(client.log_batch, run_id, synchronous=True,
                          tags=[RunTag(k, v) for k, v in tags.items()]))
        if run.info.status == "RUNNING":
            retry(partial(client.set_terminated, run_id, status))


def artifact_names(uri: str, run_id: str, folder: str) -> set[str]:
    """Names of the files in ``folder`` of run ``run_id`` (a listing, nothing downloaded)."""
    return {entry.path.rpartition("/")[2]
            for entry in write_client(uri).list_artifacts(run_id, folder) if not entry.is_dir}


def add_artifacts(uri: str, run_id: str, files: list[Path], folder: str) -> None:
    """Log ``files`` into ``folder`` of run ``run_id``, ended or not (the search driver adds the
    plots of trials Tune stopped before they drew them)."""
    client = write_client(uri)
    for path in files:
        client.log_artifact(run_id, str(path), folder)
