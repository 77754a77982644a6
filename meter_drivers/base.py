"""The meter driver interface, its reading type and its errors.

Every driver is an async source of :class:`Reading` objects: cumulative import
and export energy in whole watt-hours, stamped with the meter's own time where
the meter has a clock, plus instantaneous net power where the meter reports it.

Sign convention, used by every driver: ``power_w`` is *net* power at the grid
connection, positive while importing from the grid and negative while
exporting to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Reading:
    """One meter reading."""

    ts: int
    """Unix time in whole seconds, taken from the meter's clock where it has one."""
    import_wh: int
    """Cumulative energy imported from the grid, Wh (all tariffs summed)."""
    export_wh: int
    """Cumulative energy exported to the grid, Wh (all tariffs summed)."""
    power_w: int | None = None
    """Instantaneous net power in W (import positive), or None if not reported."""


class MeterDriver(Protocol):
    """What the daemon needs from a meter.

    ``read()`` waits for and returns the next reading. It raises
    :class:`MeterUnavailable` when the meter cannot be reached (the caller may
    retry: drivers reconnect on the next call) and :class:`BadReading` when
    the meter answered with values that fail validation. ``aclose()`` releases
    the port or connection; it is safe to call twice.
    """

    async def read(self) -> Reading: ...

    async def aclose(self) -> None: ...


class DriverError(Exception):
    """Root of every error a meter driver raises on purpose."""


class DriverConfigError(DriverError):
    """Raised when a driver's options are unknown, missing or invalid.

    ``key`` names the offending option (or ``"driver"`` for an unknown driver
    name). This is the operator's mistake; retrying will not help.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"meter option {key!r}: {message}")
        self.key = key


class MeterUnavailable(DriverError):
    """Raised when the meter cannot be reached or stops answering.

    Examples: connection refused, serial port missing, no complete telegram
    or Modbus answer within the timeout, the connection closed. The lower
    level error, if any, is in ``__cause__``. Transient: retry with back-off.
    """


class BadReading(DriverError):
    """Raised when the meter answered but the values fail validation.

    Examples: negative or decreasing cumulative energy, a missing energy
    register, a SunSpec map without a supported meter model.
    """


class ReadingGuard:
    """Rejects implausible readings relative to the last accepted one.

    A cumulative register never goes backwards and is never negative; a
    meter that reports otherwise (bit errors, a swapped meter, a hostile
    bridge) must not move our energy accounts. Time must not go backwards
    either. ``rejected`` counts rejections.
    """

    def __init__(self) -> None:
        self.last: Reading | None = None
        self.rejected = 0

    def check(self, reading: Reading) -> Reading:
        """Return ``reading`` if plausible; raise :class:`BadReading` (and count) if not."""
        problem = self._problem(reading)
        if problem is not None:
            self.rejected += 1
            raise BadReading(problem)
        self.last = reading
        return reading

    def _problem(self, r: Reading) -> str | None:
        if r.import_wh < 0 or r.export_wh < 0:
            return f"negative cumulative energy ({r.import_wh}, {r.export_wh})"
        if r.ts < 0:
            return f"negative timestamp {r.ts}"
        last = self.last
        if last is None:
            return None
        if r.import_wh < last.import_wh or r.export_wh < last.export_wh:
            return (
                f"cumulative energy went backwards: import {last.import_wh} -> {r.import_wh},"
                f" export {last.export_wh} -> {r.export_wh}"
            )
        if r.ts < last.ts:
            return f"meter time went backwards: {last.ts} -> {r.ts}"
        return None
