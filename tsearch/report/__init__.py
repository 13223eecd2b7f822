"""`tsearch report`: a finished search as tables and plots (static HTML, Markdown and JSON).

Analysis and rendering are separate; rendering imports analysis, never the other way:

- :mod:`~tsearch.report.curves`: per-trial FID and compute curves, kimg to a target FID.
- :mod:`~tsearch.report.cells`: trials grouped into cells (configurations) and their row labels.
- :mod:`~tsearch.report.analysis`: trials grouped into cells and blocks, every table's numbers
  (:func:`build_report`) and their JSON form (:func:`report_json`).
- :mod:`~tsearch.report.figures`: the PNGs (FID curves, p(t) heatmaps and profiles).
- :mod:`~tsearch.report.render`: tables, Markdown, HTML, and :func:`write_report`.

The page as headless Chromium shows it is checked by the tests' own driver, ``tests/browser.py``.
"""

from __future__ import annotations

from tsearch.report.analysis import (
    MISSING,
    SCHEDULE_ORDER,
    Block,
    EvalStat,
    Report,
    TargetStat,
    build_report,
    check_options,
    report_json,
)
from tsearch.report.cells import LEARNED_TOLERANCE, Row, group_cells
from tsearch.report.curves import (
    INTERPOLATION,
    compute_at,
    evaluations,
    kimg_to_target,
    value_at,
)
from tsearch.report.figures import Figure, block_figures
from tsearch.report.render import (
    CSS,
    READING,
    Table,
    fid_table,
    render_html,
    render_markdown,
    speed_table,
    table_html,
    table_markdown,
    write_report,
)

__all__ = [
    "CSS",
    "INTERPOLATION",
    "LEARNED_TOLERANCE",
    "MISSING",
    "READING",
    "SCHEDULE_ORDER",
    "Block",
    "EvalStat",
    "Figure",
    "Report",
    "Row",
    "Table",
    "TargetStat",
    "block_figures",
    "build_report",
    "check_options",
    "compute_at",
    "evaluations",
    "fid_table",
    "group_cells",
    "kimg_to_target",
    "render_html",
    "render_markdown",
    "report_json",
    "speed_table",
    "table_html",
    "table_markdown",
    "value_at",
    "write_report",
]
