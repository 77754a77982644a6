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

    Examples: negative or decreasing cumulative energy, a value wider than
    the register, energy that grew faster than the connection allows, a
    missing energy register, a SunSpec map without a supported meter model.
    """


DEFAULT_MAX_POWER_W = 55_200
"""Default ceiling on power through the connection, W: 3 phases x 80 A x 230 V.

3 x 80 A is the largest small-consumer connection (the connections DSMR
meters are made for); a meter that claims more, or whose registers grew
faster, is wrong or lying. Drivers take ``max_power_w`` to change it.
"""

DEFAULT_MAX_WH = 10**12 - 1
"""Default register width, Wh (just under 1 TWh).

Wider than any register the drivers read: DSMR shows 2 x 999,999.999 kWh,
SunSpec acc32 at scale factor 0 shows 4.3 GWh. Drivers with a narrower
register pass their own ``max_wh``.
"""

MAX_TS = 253_402_300_799
"""The last second of the year 9999 (what ``datetime`` can hold)."""

_ROUNDING_REGISTERS = 4
"""Registers summed into one reading (DSMR: two tariffs each way), each shown
rounded down to its step, so the sum may run ahead of the energy by this
many steps."""


def _show(n: int) -> str:
    """``n`` as text, short whatever its size (str() of a 4,300-digit int raises)."""
    if -(10**18) < n < 10**18:
        return str(n)
    return f"{'-' if n < 0 else ''}~2^{n.bit_length() - 1}"


class ReadingGuard:
    """Rejects implausible readings, alone and relative to the last accepted one.

    A reading is refused (:class:`BadReading`, counted in ``rejected``) when

    * an energy register is negative or above ``max_wh`` (the register
      width: no meter can show more);
    * its time is negative or past :data:`MAX_TS`;
    * it reports more than ``max_power_w`` W, either way;
    * a register went backwards, or time did: cumulative registers never
      decrease (bit errors, a swapped meter, a hostile bridge);
    * import plus export grew by more than ``max_power_w`` could carry in the
      elapsed time (see :meth:`allowance_wh`).

    Every driver checks its readings here, so the rules are the same for all.
    ``last`` is the last accepted reading; refused readings never replace
    it, so one bad value does not move the baseline.
    """

    def __init__(
        self, *, max_wh: int = DEFAULT_MAX_WH, max_power_w: int = DEFAULT_MAX_POWER_W
    ) -> None:
        if max_wh <= 0 or max_power_w <= 0:
            raise ValueError("need max_wh > 0 and max_power_w > 0")
        self.max_wh = max_wh
        self.max_power_w = max_power_w
        self.last: Reading | None = None
        self.rejected = 0

    def check(self, reading: Reading, *, step_wh: int = 1) -> Reading:
        """Return ``reading`` if plausible; raise :class:`BadReading` (and count) if not.

        ``step_wh`` is how far the meter's energy registers move at once
        (1 for DSMR; 1000 for a SunSpec register counted in kWh); it widens
        the jump allowance so that a coarse register is not refused.
        """
        problem = self._problem(reading, step_wh)
        if problem is not None:
            self.rejected += 1
            raise BadReading(problem)
        self.last = reading
        return reading

    def allowance_wh(self, seconds: int, step_wh: int = 1) -> int:
        """The most import plus export may grow in ``seconds`` (whole-second stamps).

        ``max_power_w`` for ``seconds + 1`` s (two stamps truncated to the
        second may hide almost a second), rounded up, plus the rounding of
        each summed register.
        """
        return -(-self.max_power_w * (seconds + 1) // 3600) + _ROUNDING_REGISTERS * step_wh

    def _problem(self, r: Reading, step_wh: int) -> str | None:
        # Invariant: range checks come first, so the relative checks (and
        # their messages) only ever see values below max_wh and MAX_TS.
        for name, wh in (("import", r.import_wh), ("export", r.export_wh)):
            if not 0 <= wh <= self.max_wh:
                return f"{name} register {_show(wh)} Wh outside 0..{self.max_wh}"
        if not 0 <= r.ts <= MAX_TS:
            return f"timestamp {_show(r.ts)} outside 0..{MAX_TS}"
        if r.power_w is not None and not -self.max_power_w <= r.power_w <= self.max_power_w:
            return f"power {_show(r.power_w)} W beyond the connection's {self.max_power_w} W"
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
        grown = r.import_wh - last.import_wh + r.export_wh - last.export_wh
        allowed = self.allowance_wh(r.ts - last.ts, step_wh)
        if grown > allowed:
            return (
                f"energy grew {grown} Wh in {r.ts - last.ts} s; at most {allowed} Wh"
                f" fit through {self.max_power_w} W"
            )
        return None
