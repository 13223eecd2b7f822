"""Progress display: a live bar on a terminal, periodic plain lines otherwise (CI, Ray logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Shows kimg, the last training loss and the last headline evaluation metric (FID)."""

    def __init__(self, total_kimg: float, enabled: bool = True, start_kimg: float = 0.0,
                 stream=None):
        self.total = total_kimg
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.loss: float | None = None
        self.metric: tuple[str, float] | None = None  # (label, value), e.g. ("FID", 31.2)
        self._bar = None
        self._last_line = 0.0
        self._start = time.perf_counter()
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(),
                TextColumn("{task.completed:.2f}/{task.total:g} kimg"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._task = self._bar.add_task("train", total=total_kimg, completed=start_kimg,
                                            info="")
            self._bar.start()

    def _info(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.metric is not None:
            parts.append(f"{self.metric[0]} {self.metric[1]:.2f}")
        return "  ".join(parts)

    def update(self, kimg: float, loss: float | None = None,
               metric: tuple[str, float] | None = None) -> None:
        if loss is not None:
            self.loss = loss
        if metric is not None:
            self.metric = metric
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=kimg, info=self._info())
            return
        now = time.perf_counter()
        if metric is not None or now - self._last_line > 10.0 or kimg >= self.total:
            self._last_line = now
            pct = 100.0 * kimg / self.total if self.total else 100.0
            print(f"train {kimg:.2f}/{self.total:g} kimg ({pct:.0f}%)  {self._info()}  "
                  f"[{now - self._start:.0f} s]", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
