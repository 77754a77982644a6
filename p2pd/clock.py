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
    """Unix time = ``base`` + trio.current_time(); follows MockClock/autojump."""

    def __init__(self, base: float) -> None:
        self.base = base

    def now(self) -> float:
        return self.base + trio.current_time()


def trio_deadline(clock: Clock, wall_deadline: float | None) -> float:
    """Convert a wall-clock deadline (or None) into a trio deadline."""
    if wall_deadline is None:
        return float("inf")
    return trio.current_time() + max(0.0, wall_deadline - clock.now())
