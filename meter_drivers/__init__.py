"""Meter drivers: async sources of cumulative import/export energy readings.

Public names are re-exported here; import from ``meter_drivers`` only.
This package never imports ``p2pd``, ``store`` or ``protocol``; the MQTT
driver uses ``paho_trio`` (MQTT on trio, shared with ``p2pd``).

``DRIVERS`` maps the ``driver`` name used in the configuration to a class
built from the option table: ``DRIVERS[name](options)``. Constructing a
driver only validates options (raising :class:`DriverConfigError`); the port
or connection is opened on the first ``read()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from meter_drivers.base import DEFAULT_MAX_POWER_W as DEFAULT_MAX_POWER_W
from meter_drivers.base import BadReading as BadReading
from meter_drivers.base import DriverConfigError as DriverConfigError
from meter_drivers.base import DriverError as DriverError
from meter_drivers.base import MeterDriver as MeterDriver
from meter_drivers.base import MeterUnavailable as MeterUnavailable
from meter_drivers.base import Reading as Reading
from meter_drivers.base import ReadingGuard as ReadingGuard
from meter_drivers.csv_replay import CsvReplayMeter as CsvReplayMeter
from meter_drivers.dsmr_p1 import DsmrP1Meter as DsmrP1Meter
from meter_drivers.health import HealthState as HealthState
from meter_drivers.health import MeterHealth as MeterHealth
from meter_drivers.health import MonitoredMeter as MonitoredMeter
from meter_drivers.mqtt import MqttMeter as MqttMeter
from meter_drivers.mqtt_decoder import MqttDecoder as MqttDecoder
from meter_drivers.mqtt_decoder import MqttStats as MqttStats
from meter_drivers.p1_decoder import P1Decoder as P1Decoder
from meter_drivers.p1_decoder import P1Stats as P1Stats
from meter_drivers.simulated import DayProfile as DayProfile
from meter_drivers.simulated import SimulatedMeter as SimulatedMeter
from meter_drivers.simulated import day_profile as day_profile
from meter_drivers.sunspec import SunSpecMeter as SunSpecMeter

DRIVERS: dict[str, Callable[[dict[str, Any]], MeterDriver]] = {
    "simulated": SimulatedMeter,
    "csv": CsvReplayMeter,
    "dsmr_p1": DsmrP1Meter,
    "sunspec": SunSpecMeter,
    "mqtt": MqttMeter,
}


def create_driver(name: str, options: Mapping[str, Any]) -> MeterDriver:
    """Build the driver ``name`` from its option table (no I/O).

    Raises :class:`DriverConfigError` (``key == "driver"`` for an unknown
    name, else the offending option).
    """
    if name not in DRIVERS:
        raise DriverConfigError("driver", f"unknown driver {name!r} (known: {', '.join(DRIVERS)})")
    if not isinstance(options, Mapping):
        raise DriverConfigError("options", "must be a table of options")
    return DRIVERS[name](dict(options))


@asynccontextmanager
async def open_driver(name: str, options: Mapping[str, Any]) -> AsyncIterator[MeterDriver]:
    """``async with open_driver(name, options) as meter:``; closes the meter on exit.

    Raises :class:`DriverConfigError` on entry for bad configuration.
    """
    driver = create_driver(name, options)
    try:
        yield driver
    finally:
        with trio.CancelScope(shield=True):
            await driver.aclose()


async def read_once(
    driver_name: str,
    options: dict[str, Any],
    *,
    # A CLI helper: the timeout is its interface (it becomes MeterUnavailable).
    timeout: float = 60.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """One reading as a JSON-ready dict, for ``p2pd meter read --json``.

    Returns ``{"ts": int, "import_wh": int, "export_wh": int, "power_w": int | None}``.
    Raises :class:`DriverConfigError` for bad options, :class:`MeterUnavailable`
    if no reading arrives within ``timeout`` seconds (or the driver's own
    timeout), :class:`BadReading` if the meter's values fail validation.
    """
    async with open_driver(driver_name, options) as meter:
        try:
            with trio.fail_after(timeout):
                r = await meter.read()
        except trio.TooSlowError as exc:
            raise MeterUnavailable(f"no reading within {timeout} s") from exc
    return {"ts": r.ts, "import_wh": r.import_wh, "export_wh": r.export_wh, "power_w": r.power_w}
