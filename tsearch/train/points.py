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


class At:
    """Due at each of fixed points (``kimgs``), e.g. ASHA's rungs: a search evaluates where a
    decision needs it, not on a dense grid. Same interface as :class:`Every`."""

    def __init__(self, kimgs: tuple[float, ...] | list[float], images_seen: int = 0):
        self.points = sorted({max(int(round(k * 1000)), 1) for k in kimgs})
        self.advance(images_seen)

    def due(self, images_seen: int) -> bool:
        return images_seen >= self.next

    def advance(self, images_seen: int) -> None:
        later = [p for p in self.points if p > images_seen]
        self.next = later[0] if later else 2**62  # none left: the end of training evaluates


def eval_points(every_kimg: float, at_kimg: tuple[float, ...], images_seen: int) -> Every | At:
    """``eval.at_kimg`` when given (a search's rungs), else every ``eval.every_kimg``."""
    return At(at_kimg, images_seen) if at_kimg else Every(every_kimg, images_seen)
