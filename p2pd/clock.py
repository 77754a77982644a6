"""Wall-clock time for the daemon, in one place.

Credentials, orders and receipts carry unix times, so sessions need wall time,
while trio schedules on its own clock. A :class:`Clock` gives wall time and
converts a wall-clock deadline into a trio deadline. Tests use
:class:`TrioWallClock` so wall time advances with trio's (mock) clock.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float:
        """Current unix time in seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class TrioWallClock:
    """Unix time that reads ``base`` now and then follows trio's clock.

    Create it inside trio. With MockClock/autojump, wall time jumps too; a
    ``scale`` above 1 runs it faster (simulations of a day in a minute).
    """

    def __init__(self, base: float, scale: float = 1.0) -> None:
        self.base = base
        self.scale = scale
        self.origin = trio.current_time()

    def now(self) -> float:
        return self.base + (trio.current_time() - self.origin) * self.scale


def trio_deadline(clock: Clock, wall_deadline: float | None) -> float:
    """Convert a wall-clock deadline (or None) into a trio deadline."""
    if wall_deadline is None:
        return float("inf")
    scale = getattr(clock, "scale", 1.0)
    return trio.current_time() + max(0.0, wall_deadline - clock.now()) / scale
