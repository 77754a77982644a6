"""A driver wrapper that retries a vanished meter with back-off and reports health.

The trading agent must not offer energy it cannot measure, so it checks
:attr:`MonitoredMeter.healthy` before offering; the daemon reports
:attr:`MonitoredMeter.health` over the control API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import trio

from meter_drivers.base import BadReading, MeterDriver, MeterUnavailable, Reading


class HealthState(enum.Enum):
    STARTING = "starting"
    """No reading yet."""
    OK = "ok"
    """The last read succeeded."""
    RETRYING = "retrying"
    """The last read failed; the wrapper is backing off and retrying."""


@dataclass(frozen=True)
class MeterHealth:
    """What the daemon reports about a meter."""

    state: HealthState
    attempt: int = 0
    """Consecutive failed attempts (0 when ``state`` is OK)."""
    last_error: str | None = None
    """The most recent failure, as one line; kept after recovery for the log."""
    last_reading: Reading | None = None


class MonitoredMeter:
    """Wraps a :class:`MeterDriver`: retries on failure, tracks :class:`MeterHealth`.

    ``read()`` retries :class:`MeterUnavailable` and :class:`BadReading` with
    exponential back-off (``initial_delay`` doubling up to ``max_delay``
    seconds, on the trio clock) until a reading arrives, and raises the last
    error after ``max_attempts`` failures if that is set. Other errors (such
    as :class:`DriverConfigError`) propagate at once. Cancel it with a cancel
    scope as usual; health stays RETRYING until a read succeeds.
    """

    def __init__(
        self,
        driver: MeterDriver,
        *,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        max_attempts: int | None = None,
    ) -> None:
        if initial_delay <= 0 or max_delay < initial_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        self.driver = driver
        self._initial = initial_delay
        self._max = max_delay
        self._max_attempts = max_attempts
        self.health = MeterHealth(HealthState.STARTING)

    @property
    def healthy(self) -> bool:
        """True only while the most recent read succeeded."""
        return self.health.state is HealthState.OK

    def _delay(self, attempt: int) -> float:
        return float(min(self._max, self._initial * 2 ** min(attempt - 1, 32)))

    async def read(self) -> Reading:
        """Return the next reading, retrying as described in the class docstring."""
        while True:
            try:
                reading = await self.driver.read()
            except (MeterUnavailable, BadReading) as exc:
                attempt = self.health.attempt + 1
                self.health = MeterHealth(
                    HealthState.RETRYING,
                    attempt,
                    f"{type(exc).__name__}: {exc}",
                    self.health.last_reading,
                )
                if self._max_attempts is not None and attempt >= self._max_attempts:
                    raise
                await trio.sleep(self._delay(attempt))
                continue
            self.health = MeterHealth(HealthState.OK, 0, self.health.last_error, reading)
            return reading

    async def aclose(self) -> None:
        await self.driver.aclose()
