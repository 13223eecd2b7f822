"""The confirmation phase's runs: Tune experiments of retrainings, raced or all at once.

The stage's pure parts (candidates, cells, ranking) are in :mod:`tsearch.search.confirm`; this
runs them as a second Tune experiment inside the search's (``confirm``), or one per racing round
(``confirm-r1``, ``confirm-r2``, ...; docs/search.md, section 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tsearch import names
from tsearch.errors import TsearchError
from tsearch.labels import SEED_KEY
from tsearch.log import get_logger
from tsearch.names import METHOD_KEY
from tsearch.records import TrialRecord
from tsearch.search import phase, tune_state
from tsearch.search.confirm import (
    CONFIRM_SUBDIR,
    Candidate,
    baseline_point,
    candidates,
    cells,
    rank,
)
from tsearch.search.space import GRID_KEY
from tsearch.search.trial_plots import complete_phase_plots

if TYPE_CHECKING:
    from tsearch.search.parent_run import ParentRun
    from tsearch.search.results import SearchResult

log = get_logger(__name__)


def run_phase(ctx: phase.SearchContext, result: SearchResult, parent: ParentRun, *,
              base: dict[str, Any], meta: phase.TrialMeta, state: dict[str, Any]) -> None:
    """Retrain the top configurations and the baseline on fresh seeds; rank them by mean FID.

    ``state`` is the search's state file: the candidates are saved there when the phase begins,
    so a resumed phase runs the same ones.
    """
    cfg, checked = ctx.cfg, ctx.checked
    c = cfg.search.confirm
    saved = state.get("confirm", {}).get("candidates")
    if saved:  # resumed: the candidates chosen when the phase began
        cands = [Candidate(**x) for x in saved]
    else:
        point = baseline_point(cfg, checked.space, base, checked.points)
        by_model = cfg.search.recommend == "model" and result.predictions
        cands = candidates(result.trials, checked.space.labels, c.top_k, point,
                           sampler=cfg.timesteps.sampler.name,
                           order=[p.trial for p in result.predictions] if by_model else None)
        if by_model:
            log.info("confirmation candidates: the model's best predicted means "
                     "(search.recommend: model)")
        state["confirm"] = {"candidates": [asdict(x) for x in cands]}
        tune_state.write_state(ctx.exp_path / names.SEARCH_STATE, state)
    used = {int(t.values.get(SEED_KEY, cfg.train.seed)) for t in result.trials}
    if used & set(c.seeds):  # plan() checked the space; this checks what really ran
        raise TsearchError(f"search.confirm.seeds {sorted(used & set(c.seeds))} were used by "
                           "search trials; confirmation needs fresh seeds")
    kimg = c.set.get(names.TOTAL_KIMG_KEY, cfg.train.total_kimg)
    how = (f"raced over up to {len(c.seeds)} fresh seeds (paired t-test at "
           f"{c.racing.alpha:g})" if c.racing.enabled else f"x {len(c.seeds)} fresh seeds")
    log.info(f"confirmation: {len(cands)} configurations {how} "
             f"({', '.join(map(str, c.seeds))}) at {kimg:g} kimg, no early stopping"
             + (f"; with {', '.join(f'{k}={v}' for k, v in c.set.items())}" if c.set else ""))
    for cand in cands:
        fid = f"search FID {cand.search_fid:.2f}" if cand.search_fid is not None else "not a trial"
        log.info(f"  {cand.label}  ({fid}{', baseline' if cand.baseline else ''})")
    cbase = {**base, "eval": {**base["eval"],
                              "at_kimg": list(c.eval_at_kimg or cfg.eval.at_kimg)}}
    trainable = phase.trainable(ctx, cbase, meta.for_phase(names.PHASE_CONFIRM))
    ends = (kimg, [], parent.run_id)
    if c.racing.enabled:
        result.confirm_trials = _race(ctx, cands, trainable, cbase, ends)
    else:
        result.confirm_trials = _fit(ctx, CONFIRM_SUBDIR, cells(cands, c.seeds, c.set),
                                     trainable, cbase, ends)
    complete_phase_plots(result.confirm_trials, cbase, ctx.uri)
    result.confirmation = rank(
        cands, result.confirm_trials, c.seeds, c.set, search=checked.name,
        parent_run_id=parent.run_id, tracking_uri=ctx.uri, alpha=c.racing.alpha,
        raced=c.racing.enabled)
    parent.record_confirmation(result, base, c.set)


def _fit(ctx: phase.SearchContext, subdir: str, grid_cells: list[dict[str, Any]],
         trainable: Any, cbase: dict[str, Any],
         ends: tuple[float | None, list[float], str | None]) -> list[TrialRecord]:
    """One Tune experiment of confirmation runs (``subdir`` of the search's), resumed when it
    exists and the search is resumed; their records."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tsearch.search.results import trial_records

    s, checked = ctx.cfg.search, ctx.checked
    cexp = ctx.exp_path / subdir
    if ctx.resume and tune.Tuner.can_restore(str(cexp)):
        log.info(f"resuming {cexp}")
        tune_state.mend_state(cexp, f"{checked.name}/{subdir}", checked.name)
        tune_state.stub_pruned_checkpoints(cexp)
        tuner = tune.Tuner.restore(str(cexp), trainable=trainable, resume_errored=True,
                                   restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={GRID_KEY: tune.grid_search(grid_cells)},
            tune_config=tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler(),
                                        max_concurrent_trials=s.confirm.max_concurrent or
                                        s.max_concurrent, reuse_actors=s.reuse_actors),
            run_config=phase.run_config(ctx, subdir, _join(ctx.storage, checked.name),
                                        [METHOD_KEY], cbase, ends=ends))
    grid = tuner.fit()
    tune_state.prune_checkpoints(cexp, s.num_to_keep)
    return trial_records(grid)


def final_fids(trials: Sequence[TrialRecord]) -> dict[str, dict[int, float | None]]:
    """{candidate label: {seed: final FID}} of confirmation runs (None: failed or no FID)."""
    out: dict[str, dict[int, float | None]] = {}
    for t in trials:
        label, seed = t.values.get(METHOD_KEY), t.values.get(SEED_KEY)
        if label is None or seed is None:
            continue
        finite = [f for _, f in t.fid_by_kimg if math.isfinite(f)]
        out.setdefault(str(label), {})[int(seed)] = finite[-1] if finite and not t.failed \
            else None
    return out


def _race(ctx: phase.SearchContext, cands: Sequence[Candidate], trainable: Any,
          cbase: dict[str, Any], ends: tuple[float | None, list[float], str | None]
          ) -> list[TrialRecord]:
    """Race the candidates over ``confirm.seeds``: one Tune experiment per round
    (``confirm-r1``, ``confirm-r2``, ...). Rounds follow from the results alone, so a resumed
    search restores the finished rounds' experiments and goes on where it stopped."""
    from tsearch.search import racing

    c = ctx.cfg.search.confirm
    r = c.racing
    by_label = {x.label: x for x in cands}
    keep = next(x.label for x in cands if x.baseline)
    records: list[TrialRecord] = []
    results: dict[str, dict[int, float | None]] = {x.label: {} for x in cands}
    step = racing.next_round(results, list(by_label), c.seeds, alpha=r.alpha, keep=keep,
                             per_round=r.seeds_per_round)
    i = 0
    while step.seeds:
        i += 1
        log.info(f"racing round {i}: {len(step.alive)} candidate"
                 f"{'s' if len(step.alive) != 1 else ''} on seed"
                 f"{'s' if len(step.seeds) != 1 else ''} {', '.join(map(str, step.seeds))}")
        got = _fit(ctx, f"{CONFIRM_SUBDIR}-r{i}",
                   cells([by_label[a] for a in step.alive], step.seeds, c.set), trainable,
                   cbase, ends)
        records += got
        finals = final_fids(got)
        for label in step.alive:  # a run without a record failed before reporting
            for seed in step.seeds:
                results[label][int(seed)] = finals.get(label, {}).get(int(seed))
        step = racing.next_round(results, step.alive, c.seeds, alpha=r.alpha, keep=keep,
                                 per_round=r.seeds_per_round)
        if step.verdict is not None:
            log.info(f"racing round {i}: {step.verdict.sentence(final=not step.seeds)}"
                     + (f"; racing on: {', '.join(step.alive)}" if step.seeds else ""))
    return records


def _join(storage: str, *parts: str) -> str:
    """A path under the search storage, which may be a URI (s3://...) that Path would mangle."""
    return "/".join([storage.rstrip("/"), *parts])


