"""When the trainer logs and evaluates: points counted in training images seen."""

from __future__ import annotations


class Every:
    """Due once ``images_seen`` reaches the next multiple of ``kimg`` (after a resume too)."""

    def __init__(self, kimg: float, images_seen: int = 0):
        self.period = max(int(round(kimg * 1000)), 1)
        self.advance(images_seen)

    def due(self, images_seen: int) -> bool:
        return images_seen >= self.next

    def advance(self, images_seen: int) -> None:
        """Move past ``images_seen`` (call after acting on a due point)."""
        self.next = (images_seen // self.period + 1) * self.period
