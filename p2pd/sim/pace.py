"""Keeping a wall-clock simulation honest: a market clock that can slow down, and the pacer.

In the wall-clock mode (loopback TCP, SQLite) the market clock runs
``time_scale`` times faster than the wall clock, and the nodes must keep up:
an agent that ticks late posts offers after the buyers looked, a take whose
owner is busy times out. Nothing in the market notices; only the traded
energy drops. So the run measures it (docs/simulation.md, "Time"):

* the **lag**: how late a task that sleeps wakes up (:class:`LagProbe`), in
  wall seconds, times the scale: how far behind the market clock the nodes
  act, in simulated seconds;
* the **share of takes that time out** (the agents' ``take_failed:TIMEOUT``
  against their takes).

:class:`Pacer` decides from both: while the nodes keep up, nothing; when they
do not, divide the scale by 2 to 8, aiming at a third of the lag allowed
(:class:`SimClock` changes it without a jump), down to the slowest scale
allowed; past that, stop the run with a message that says why. Every change and every look's worst lag go into the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd.clock import TrioWallClock

LAG_LIMIT_S = 30.0
"""Simulated seconds the nodes may act late (90th percentile of a look); a
slot is 900 s, an offer is posted an hour ahead. Past it, the scale drops so
that the lag would come down to a third of it."""
TIMEOUT_LIMIT = 0.02
"""Share of takes (of a look) that may time out."""
MIN_TAKES = 5
"""A look judges take timeouts only when at least this many takes ended in it."""
LOOK_S = 2.0
"""Wall seconds of measurements per decision, at most."""
LOOK_SIM_S = 900.0
"""...and at most one slot of simulated time: at x2880 two wall seconds are 96
simulated minutes, a whole morning's rush gone before the first decision."""
MIN_LOOK_S = 0.5
"""But at least this much wall time: enough lag samples to judge."""
SETTLE_S = 4.0
"""Wall seconds after a change before the next look counts (queues drain);
at most two slots of simulated time at the new scale, at least :data:`MIN_LOOK_S`."""
STRIKES = 3
"""Bad looks in a row at the slowest scale before the run stops."""


class SimClock(TrioWallClock):
    """A :class:`~p2pd.clock.TrioWallClock` whose scale can change at a trio time.

    The reading stays continuous: at the switch, ``base`` becomes the reading
    then and ``origin`` the switch time. A switch in the future is applied by
    the first :meth:`now` at or after it, so processes that agree on the
    wall time of a switch read the same simulated time.
    """

    def __init__(self, base: float, scale: float = 1.0) -> None:
        super().__init__(base, scale)
        self._pending: tuple[float, float] | None = None

    def now(self) -> float:
        if self._pending is not None and trio.current_time() >= self._pending[0]:
            self._apply()
        return super().now()

    def rescale(self, scale: float, at: float | None = None) -> None:
        """Run at ``scale`` from trio time ``at`` (default: now). Raises ValueError if ``scale <= 0``."""
        if not scale > 0:
            raise ValueError("scale must be positive")
        if self._pending is not None:
            self._apply()
        self._pending = (trio.current_time() if at is None else at, scale)
        self.now()

    def _apply(self) -> None:
        assert self._pending is not None
        at, scale = self._pending
        self._pending = None
        self.base += (at - self.origin) * self.scale
        self.origin = at
        self.scale = scale


def trio_time_of_wall(wall: float, now_wall: float) -> float:
    """The trio time at which the wall clock (``time.time()``, read as ``now_wall``) reads ``wall``."""
    return trio.current_time() + (wall - now_wall)


class LagProbe:
    """Measures how late sleeping tasks wake: the event loop's lag, in wall seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sleep ``interval`` again and again, recording each wake-up's delay."""
        task_status.started()
        while True:
            t0 = trio.current_time()
            await trio.sleep(self.interval)
            self.samples.append(max(0.0, trio.current_time() - t0 - self.interval))
            if len(self.samples) > 10_000:  # nobody took them: keep the recent ones
                del self.samples[:5_000]

    def take(self) -> list[float]:
        """The samples since the last call."""
        out, self.samples = self.samples, []
        return out


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def take_outcomes(counters: dict[str, int]) -> tuple[int, int]:
    """(takes that ended, takes that timed out) from agents' counters."""
    timeouts = counters.get("take_failed:TIMEOUT", 0)
    ended = counters.get("takes", 0) + sum(v for k, v in counters.items() if k.startswith("take_failed:"))
    return ended, timeouts


@dataclass
class Decision:
    """What the pacer wants: ``rescale`` to a new scale, or ``stop`` with a reason."""

    rescale: float | None = None
    stop: str | None = None


@dataclass
class Pacer:
    """Decides from the measurements whether the run keeps up; see the module docstring.

    Feed it with :meth:`look` (wall time, lag samples, takes ended and timed
    out since the last look, the current simulated time). ``min_scale`` equal
    to ``scale`` means never slow down: stop instead.
    """

    scale: float
    min_scale: float
    lag_limit: float = LAG_LIMIT_S
    timeout_limit: float = TIMEOUT_LIMIT
    requested: float = 0.0
    changes: list[dict[str, Any]] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)
    """Each look's 90th-percentile lag, simulated seconds."""
    takes: int = 0
    timeouts: int = 0
    stopped: str | None = None
    _lags: list[float] = field(default_factory=list)
    _takes: int = 0
    _timeouts: int = 0
    _since: float | None = None
    _quiet_until: float = 0.0
    _strikes: int = 0

    def __post_init__(self) -> None:
        self.requested = self.requested or self.scale
        self.min_scale = min(self.min_scale, self.scale)

    def look(self, wall: float, lags: list[float], takes: int, timeouts: int,
             sim_time: float) -> Decision | None:
        """Add measurements; every :data:`LOOK_S` of them, a decision (or None: carry on)."""
        self.takes += takes
        self.timeouts += timeouts
        if wall < self._quiet_until:
            return None
        if self._since is None:
            self._since = wall
        self._lags += lags
        self._takes += takes
        self._timeouts += timeouts
        if wall - self._since < self._window(LOOK_S, LOOK_SIM_S):
            return None
        lag = quantile(self._lags, 0.9) * self.scale
        share = self._timeouts / self._takes if self._takes >= MIN_TAKES else 0.0
        self.worst.append(round(lag, 1))
        self._lags, self._takes, self._timeouts, self._since = [], 0, 0, None
        why = []
        if lag > self.lag_limit:
            why.append(f"the nodes act {lag:.0f} s (simulated) late")
        if share > self.timeout_limit:
            why.append(f"{100 * share:.0f}% of takes time out")
        if not why:
            self._strikes = 0
            return None
        reason = " and ".join(why)
        if self.scale > self.min_scale:
            # Lag grows with the scale: aim at a third of the limit (the load
            # still grows through a morning), by a factor of 2 to 8.
            new = self.scale / min(8.0, max(2.0, 3 * lag / self.lag_limit))
            new = max(self.min_scale, float(f"{new:.3g}"))  # x118, not x118.174
            self.changes.append({"sim_time": int(sim_time), "from": self.scale, "to": new, "why": reason})
            self.scale = new
            self._quiet_until = wall + self._window(SETTLE_S, 2 * LOOK_SIM_S)
            return Decision(rescale=new)
        self._strikes += 1
        if self._strikes < STRIKES:
            return None
        self.stopped = (f"the nodes cannot keep up at x{self.scale:g} (the slowest allowed, "
                        f"--min-time-scale): {reason}; try more --workers, fewer --nodes, a lower "
                        "--min-time-scale, or --memory (virtual time)")
        return Decision(stop=self.stopped)

    def _window(self, wall_s: float, sim_s: float) -> float:
        """``wall_s`` wall seconds, but no more than ``sim_s`` simulated ones (nor under MIN_LOOK_S)."""
        return min(wall_s, max(MIN_LOOK_S, sim_s / self.scale))

    def report(self) -> dict[str, Any]:
        """The ``pace`` part of the report."""
        return {"requested_scale": self.requested, "final_scale": self.scale, "min_scale": self.min_scale,
                "changes": self.changes, "lag_p90_s": quantile(self.worst, 0.9),
                "lag_max_s": max(self.worst, default=0.0), "takes": self.takes,
                "take_timeouts": self.timeouts, "stopped": self.stopped}
