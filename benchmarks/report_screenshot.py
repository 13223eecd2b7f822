"""A `tsearch report` page as headless Chromium shows it, saved as a PNG (the README's picture).

Opens DIR/report.html with ``tests/browser.py`` (the driver the browser test uses),
checks that every figure decoded and every table shows, and saves the page at --width CSS px
(the top --max-height px of it, if given). Needs Debian's ``chromium`` package.

    python benchmarks/report_screenshot.py benchmarks/results/replicate-digits \
        benchmarks/results/report_screenshot.png --max-height 2300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import BrowserError, inspect_page  # noqa: E402


def problems(shown: dict) -> list[str]:
    """What a reader would miss: figures that did not decode or do not show, hidden tables."""
    out = []
    for img in shown["images"]:
        if not (img["decoded"] and img["naturalWidth"] > 0):
            out.append(f"figure {img['index']} ({img['alt']}) did not decode")
        elif not (img["shown"] and img["width"] > 0 and img["height"] > 0):
            out.append(f"figure {img['index']} ({img['alt']}) is not shown")
    for i, table in enumerate(shown["tables"]):
        if not (table["shown"] and table["width"] > 0 and table["height"] > 0):
            out.append(f"table {i} ({table['heading'] or table['className']}) is not shown")
    if shown["page"]["width"] > shown["page"]["viewport"]:
        out.append(f"the page is {shown['page']['width']} px wide in a "
                   f"{shown['page']['viewport']} px window")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report directory (or its report.html)")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--width", type=int, default=1200, help="window width, CSS px (default 1200)")
    ap.add_argument("--max-height", type=int, help="keep only the top of the page (CSS px)")
    args = ap.parse_args()
    page = args.report / "report.html" if args.report.is_dir() else args.report
    if not page.is_file():
        sys.exit(f"error: no report page at {page}")
    try:
        shown = inspect_page(page, screenshot=args.out, width=args.width,
                             max_height=args.max_height)
    except BrowserError as err:
        sys.exit(f"error: {err}")
    with Image.open(args.out) as image:  # Chromium's PNGs are lightly compressed
        image.load()
        size = image.size
    image.save(args.out, optimize=True)
    print(f"{args.out}: {size[0]}x{size[1]} px, {args.out.stat().st_size // 1024} KiB; page "
          f"{shown['page']['height']} px tall, {len(shown['images'])} figures, "
          f"{len(shown['tables'])} tables")
    if bad := problems(shown):
        sys.exit("error: " + "; ".join(bad))


if __name__ == "__main__":
    main()
