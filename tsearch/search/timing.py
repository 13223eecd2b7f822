"""Where a search's fixed cost goes: wall seconds per stage of the driver (``--verbose``).

A short search pays seconds for starting Ray, the MLflow parent run and the summary before and
after its trials train; these stages say which, so a cut can be measured rather than guessed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Wall seconds per named stage, in the order the stages first ran."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def line(self, total: float | None = None) -> str:
        """``time: ray start 2.1 s, ... (other 0.3 s, total 61.0 s)``."""
        parts = [f"{name} {seconds:.1f} s" for name, seconds in self.stages.items()]
        if total is not None:
            rest = total - sum(self.stages.values())
            parts.append(f"other {max(rest, 0.0):.1f} s, total {total:.1f} s")
        return "time: " + ", ".join(parts)


def process_age() -> float | None:
    """Seconds since this process started (Python start-up and imports included); None off
    Linux."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None
