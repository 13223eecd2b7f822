"""A search's summary tables as rows of text, for the console and for MLflow.

``tsearch search`` prints them at the end (rich tables); the parent run's description
(``mlflow.note.content``, Markdown) holds the same rows, so the MLflow UI opens a search on its
answer. Updated when the search phase ends and again after the confirmation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tsearch.search.confirm import Confirmation, describe

BEST_COLUMNS = ("trial", "status", "best FID", "kimg", "configuration")
SHOWN = 10  # best trials in the table


def best_title(result: Any, seconds: bool = True) -> str:
    """The best-trials table's title; ``seconds``: with the search's wall time."""
    took = f", {result.seconds:.0f} s" if seconds else ""
    return f"search {result.name}: best trials ({len(result.trials)} run{took})"


def trial_label(t: Any, labels: Sequence[str]) -> str:
    """A search trial's configuration in words (bundle labels first)."""
    bundle = " ".join(str(t.values[k]) for k in labels if k in t.values) or None
    return describe({k: v for k, v in t.values.items() if k not in labels}, bundle)


def recommendation_line(result: Any) -> str | None:
    """The model's pick beside the best observed trial; None without a model."""
    preds = getattr(result, "predictions", None)
    if not preds or result.best is None:
        return None
    best = result.best
    top = preds[0]
    return (f"model's recommendation: {trial_label(top.trial, result.labels)}, predicted final "
            f"FID {top.fid:.2f} ({top.low:.2f}-{top.high:.2f}), observed {top.observed:.2f}; "
            f"best observed: {trial_label(best, result.labels)}, FID {best.best_fid:.2f}")


def best_rows(result: Any, limit: int = SHOWN) -> list[list[str]]:
    """The ``limit`` best trials of a :class:`~tsearch.search.results.SearchResult`, one row each
    under :data:`BEST_COLUMNS`."""
    rows = []
    for t in sorted(result.trials, key=lambda t: t.best_fid)[:limit]:
        rows.append([t.trial_id, t.status, f"{t.best_fid:.2f}", f"{t.kimg:g}",
                     trial_label(t, result.labels)])
    return rows


def confirm_title(conf: Confirmation) -> str:
    how = "raced over fresh seeds" if conf.raced else "final FID over fresh seeds"
    spent = (f"; {conf.runs} run{'s' if conf.runs != 1 else ''}, {conf.trial_kimg:g} trial-kimg"
             if conf.runs else "")
    return (f"confirmed ranking: {how} {', '.join(map(str, conf.seeds))}"
            + (f" with {', '.join(f'{k}={v}' for k, v in conf.overrides.items())}"
               if conf.overrides else "") + spent)


def confirm_columns(conf: Confirmation) -> list[str]:
    target = f" ({conf.target_fid:.2f})" if conf.target_fid is not None else ""
    return ["#", "configuration", "search FID", "confirmed FID", "per seed", "vs leader",
            f"kimg to FID{target}", "speed-up (kimg / compute)"]


def _versus(row: Any) -> str:
    """This row minus the leader over the seeds both ran (paired; the per-seed column shows
    which), mean ± sd."""
    if row.paired_diff is None:
        return "-"
    sd = f" ± {row.paired_sd:.1f}" if row.paired_sd is not None else ""
    return f"{row.paired_diff:+.1f}{sd}"


def confirm_rows(conf: Confirmation) -> list[list[str]]:
    """The confirmed ranking, best first: search FID beside the confirmed mean ± std, and the
    speed-ups over the baseline."""
    rows = []
    for i, row in enumerate(conf.rows, 1):
        mean = "failed" if row.mean is None else (
            f"{row.mean:.2f}" + (f" ± {row.std:.2f}" if row.std is not None else ""))
        rows.append([
            str(i), row.label + (" (baseline)" if row.baseline else ""),
            "-" if row.search_fid is None else f"{row.search_fid:.2f}", mean,
            " ".join("-" if f is None else f"{f:.1f}" for f in row.finals), _versus(row),
            "-" if row.kimg_to_target is None else f"{row.kimg_to_target:.2f}",
            f"{row.speedup_text()} / {row.compute_speedup_text()}"])
    return rows


def winner_line(conf: Confirmation) -> str | None:
    """One sentence on the confirmed winner (or the leader of a stated tie), then the paired
    evidence; None when every candidate failed."""
    w = conf.winner
    if w is None:
        return None
    curse = w.winners_curse
    what = "confirmed leader (a tie)" if conf.decided is False else "confirmed winner"
    return (f"{what}: {w.label}, FID {w.mean:.2f}"
            + (f" ± {w.std:.2f}" if w.std is not None else "")
            + (f", {w.speedup_text('x')} the baseline's speed"
               if w.speedup_kimg is not None else "")
            + (f"; its search FID was {w.search_fid:.2f} (winner's curse "
               f"{curse:+.2f}: search minus confirmed)" if curse is not None else "")
            + (f". {conf.verdict[0].upper()}{conf.verdict[1:]}" if conf.verdict else ""))


def markdown(result: Any) -> str:
    """The parent run's description: the best trials and, once confirmed, the ranking."""
    parts = [f"### {best_title(result, seconds=False)}",
             _table(BEST_COLUMNS, best_rows(result))]
    line = recommendation_line(result)
    if line:
        parts.append(_cell(line))
    conf = result.confirmation
    if conf is None:
        parts.append(f"Unconfirmed: each FID is one seed, and the best is the minimum of "
                     f"{len(result.trials)} noisy trials.")
    else:
        parts += [f"### {confirm_title(conf)}", _table(confirm_columns(conf),
                                                       confirm_rows(conf))]
        parts += [f"- note: {_cell(note)}" for note in conf.notes]
        line = winner_line(conf)
        if line:
            parts.append(f"**{_cell(line)}**")
    return "\n\n".join(parts) + "\n"


def _cell(text: str) -> str:
    """Text that cannot break a Markdown table row or start markup by accident."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
