"""A :class:`~tsearch.report.analysis.Report` as documents: tables, Markdown, one static HTML page
and JSON, written with the figures by :func:`write_report`.

All formatting lives here, so the analysis stays free of presentation and the Markdown and HTML
pages share one set of tables and texts.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsearch.errors import TsearchError
from tsearch.report.analysis import MISSING, Block, Report, _f, report_json
from tsearch.report.curves import INTERPOLATION, ratio_text
from tsearch.report.figures import Figure, block_figures

# --- tables ----------------------------------------------------------------------------------


def _si(x: float | None) -> str:
    """Forward-pass counts: 3 significant digits with k / M / G."""
    if x is None or not math.isfinite(x):
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _pm(mean: float | None, std: float | None, fmt: Callable[[float | None], str] = _f) -> str:
    if mean is None:
        return MISSING
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


@dataclass
class Table:
    header: list[str]
    rows: list[list[tuple[str, bool]]]  # (text, bold)
    align: list[str]  # "l" | "r" per column


def fid_table(block: Block, label_header: str = "method") -> Table:
    """Rows = cells, columns = evaluation points; the best mean per column in bold."""
    best = []
    for j in range(len(block.columns)):
        means = [r.evals[j].mean for r in block.rows if r.evals[j] is not None]
        best.append(min(means) if means else None)
    rows = []
    for row in block.rows:
        cells: list[tuple[str, bool]] = [(row.label, False), (str(row.n), False)]
        for j, stat in enumerate(row.evals):
            if stat is None:
                cells.append((MISSING, False))
                continue
            text = _pm(stat.mean, stat.std)
            if stat.n < row.n:
                text += f" (n={stat.n})"
            cells.append((text, stat.mean == best[j]))
        rows.append(cells)
    header = [f"{label_header} \\ kimg", "n"] + [f"{k:g}" for k in block.columns]
    return Table(header=header, rows=rows, align=["l", "r"] + ["r"] * len(block.columns))


def speed_table(block: Block, label_header: str = "method") -> Table | None:
    """kimg and compute to the baseline's final FID, and the speed-ups over the baseline."""
    if block.baseline is None:
        return None
    rows = []
    for row in block.rows:
        t = row.target
        assert t is not None
        rows.append([(row.label, row is block.baseline), (_f(t.kimg_curve), False),
                     (_ratio(t.ratio_kimg, t.ratio_kimg_range), False),
                     (_si(t.compute_curve), False),
                     (_ratio(t.ratio_compute, t.ratio_compute_range), False),
                     (f"{t.n_reached} / {t.n}", False),
                     (_pm(t.kimg_mean, t.kimg_std), False)])
    header = [label_header, f"kimg to FID {_f(block.target_fid)}", "speed-up (kimg)",
              "forward passes to it", "speed-up (compute)", "seeds reaching it",
              "their kimg (mean ± std)"]
    return Table(header=header, rows=rows, align=["l", "r", "r", "r", "r", "r", "r"])


def _ratio(ratio: float | None, span: tuple[float, float] | None) -> str:
    """A speed-up cell: ">= x" when only a bound, with its range when looser than +-10%."""
    return MISSING if ratio is None else ratio_text(ratio, *(span or (None, None)))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [line([_md_escape(h) for h in table.header]),
           line([":--" if a == "l" else "--:" for a in table.align])]
    for row in table.rows:
        out.append(line([f"**{_md_escape(t)}**" if b else _md_escape(t) for t, b in row]))
    return "\n".join(out)


def table_html(table: Table) -> str:
    def cell(tag: str, text: str, align: str, bold: bool = False) -> str:
        # A narrow column wraps "mean ±" / "std" otherwise; keep the std with its sign.
        body = html.escape(text).replace(" ± ", " ±&nbsp;")
        return f'<{tag} class="{align}">' + (f"<b>{body}</b>" if bold else body) + f"</{tag}>"

    head = "".join(cell("th", h, a) for h, a in zip(table.header, table.align, strict=True))
    body = "".join(
        "<tr>" + "".join(cell("td", t, a, b) for (t, b), a in zip(row, table.align, strict=True))
        + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- documents -------------------------------------------------------------------------------


def _status_text(report: Report) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(report.statuses.items()))


def _header_rows(report: Report) -> list[tuple[str, str]]:
    return [
        ("search", report.search), ("parent run", report.parent_run_id),
        ("tracking URI", report.tracking_uri),
        ("trials", f"{report.n_trials} ({_status_text(report)})"),
        ("seeds", f"grouped by `{report.seed_key}`"), ("baseline", report.baseline),
        ("generated", report.generated),
        ("machine", "not recorded by the runs; state it when quoting these numbers"),
    ]


READING = [
    "A *cell* is one combination of the searched values except the seed; *n* is its number of "
    "seeds (trials). One block per noise schedule.",
    "FID table: evaluations grouped by their order in each trial, labelled with their mean "
    "kimg; entries are mean ± standard deviation (ddof = 1) over seeds, a single value with one "
    "seed, (n=k) when only k seeds got that far, – when none did. Bold: the lowest mean FID of "
    "the column in the block.",
    "Speed table: the target is the baseline's final FID (the mean over its seeds of each "
    "seed's last FID). *kimg to FID* is where the cell's seed-mean FID curve (over the "
    f"evaluations all its seeds have) first reaches the target, by {INTERPOLATION}; a cell "
    "whose mean curve never gets there shows –, however many single seeds do. Speed-up = the "
    "baseline's kimg ÷ this row's (> 1: faster). *Forward passes* charge training 3 "
    "forward-equivalents per image (forward + backward, as the trainer logs it) plus the "
    "sampler's probe forward passes, interpolated the same way. The last two columns give the "
    "spread: how many seeds reach the target on their own, and their kimg (mean ± std).",
]


def _images(figs: dict[str, list[Figure]], key: str) -> list[Figure]:
    return figs.get(key, [])


def render_markdown(report: Report, figures: dict[str, dict[str, list[Figure]]]) -> str:
    out = [f"# tsearch report: {report.search}", ""]
    out += [f"- **{k}**: {v}" for k, v in _header_rows(report)]
    out += ["", "## How to read it", ""] + [f"- {line}" for line in READING]
    for block in report.blocks:
        figs = figures.get(block.schedule, {})
        out += ["", f"## {block.schedule} schedule", "", "### FID at each evaluation point", "",
                table_markdown(fid_table(block, report.label_header)), ""]
        out += [f"![{f.caption}]({f.path.name})" for f in _images(figs, "fid")]
        out += ["", "### Training and compute to the baseline's final FID", ""]
        table = speed_table(block, report.label_header)
        if table is not None and block.baseline is not None:
            out += [f"Baseline **{_md_escape(block.baseline.label)}**, target FID "
                    f"{_f(block.target_fid)}.", "", table_markdown(table)]
        out += [""] + [f"- Note: {note}" for note in block.notes]
        out += ["", "### Timestep distributions p(t)", ""]
        pics = _images(figs, "heatmaps") + _images(figs, "profiles")
        out += [f"![{f.caption}]({f.path.name})" for f in pics] or ["(no p(t) snapshots)"]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1em}
th,td{border:1px solid #ccc;padding:.25em .6em;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
td.r,th.r{text-align:right} td.l,th.l{text-align:left}
table.meta td{border:none;padding:.1em .8em .1em 0}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;flex:1 1 480px;max-width:800px} figure img{width:100%;height:auto}
figcaption{font-size:.9em;color:#555}
.note{color:#7a4b00}
code{background:#f3f3f3;padding:0 .2em}
"""


def _figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    caption = html.escape(fig.caption)
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _inline_md(text: str) -> str:
    """The few Markdown marks of the fixed texts (`code`, *emphasis*) as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def render_html(report: Report, figures: dict[str, dict[str, list[Figure]]]) -> str:
    """One static page: inline CSS, figures embedded as base64 PNG, no scripts or links."""
    title = html.escape(f"tsearch report: {report.search}")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{title}</title><style>{CSS}</style></head><body>", f"<h1>{title}</h1>",
             '<table class="meta">']
    parts += [f"<tr><td><b>{html.escape(k)}</b></td><td>{_inline_md(v)}</td></tr>"
              for k, v in _header_rows(report)]
    parts += ["</table>", "<h2>How to read it</h2><ul>"]
    parts += [f"<li>{_inline_md(line)}</li>" for line in READING]
    parts.append("</ul>")
    for block in report.blocks:
        figs = figures.get(block.schedule, {})
        parts += [f"<h2>{html.escape(block.schedule)} schedule</h2>",
                  "<h3>FID at each evaluation point</h3>",
                  table_html(fid_table(block, report.label_header))]
        parts += ['<div class="figs">'] + [_figure_html(f) for f in _images(figs, "fid")]
        parts += ["</div>", "<h3>Training and compute to the baseline's final FID</h3>"]
        table = speed_table(block, report.label_header)
        if table is not None and block.baseline is not None:
            parts += [f"<p>Baseline <b>{html.escape(block.baseline.label)}</b>, "
                      f"target FID {_f(block.target_fid)}.</p>", table_html(table)]
        parts += [f'<p class="note">Note: {html.escape(note)}</p>' for note in block.notes]
        parts.append("<h3>Timestep distributions p(t)</h3>")
        pics = _images(figs, "heatmaps") + _images(figs, "profiles")
        parts += ['<div class="figs">'] + [_figure_html(f) for f in pics] + ["</div>"]
        if not pics:
            parts.append("<p>(no p(t) snapshots)</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- files -----------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj if obj is None or isinstance(obj, str | int | bool) else str(obj)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.md, report.json and the PNGs into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TsearchError(f"cannot create the report directory {out} ({err.strerror})") from None
    figures = {block.schedule: block_figures(block, out) for block in report.blocks}
    paths = {"html": out / "report.html", "markdown": out / "report.md",
             "json": out / "report.json"}
    paths["html"].write_text(render_html(report, figures), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report, figures), encoding="utf-8")
    paths["json"].write_text(json.dumps(_json_safe(report_json(report)), indent=1) + "\n",
                             encoding="utf-8")
    return paths
