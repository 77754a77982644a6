from __future__ import annotations

from itertools import pairwise

import pytest
import trio

from meter_drivers import (
    DEFAULT_MAX_POWER_W,
    DRIVERS,
    BadReading,
    DriverConfigError,
    HealthState,
    MeterUnavailable,
    MonitoredMeter,
    Reading,
    ReadingGuard,
    create_driver,
    read_once,
)
from meter_drivers.base import MAX_TS


class FlakyMeter:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.closed = False

    async def read(self) -> Reading:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        return Reading(100, 1, 2, None)

    async def aclose(self) -> None:
        self.closed = True


async def test_backoff_then_recovery(autojump_clock: trio.abc.Clock) -> None:
    flaky = FlakyMeter([MeterUnavailable("gone")] * 4 + [BadReading("weird")])
    meter = MonitoredMeter(flaky, initial_delay=1.0, max_delay=4.0)
    assert meter.health.state is HealthState.STARTING and not meter.healthy
    t0 = trio.current_time()
    assert await meter.read() == Reading(100, 1, 2, None)
    gaps = [b - a for a, b in pairwise(flaky.calls)]
    assert gaps == pytest.approx([1, 2, 4, 4, 4])
    assert trio.current_time() - t0 == pytest.approx(15)
    assert meter.healthy and meter.health.attempt == 0
    assert meter.health.last_error == "BadReading: weird"
    await meter.aclose()
    assert flaky.closed


async def test_health_visible_while_retrying(autojump_clock: trio.abc.Clock) -> None:
    meter = MonitoredMeter(FlakyMeter([MeterUnavailable("gone")] * 100), initial_delay=1.0)
    with trio.move_on_after(10):
        await meter.read()
    assert meter.health.state is HealthState.RETRYING
    assert meter.health.attempt == 4  # failures at t=0, 1, 3, 7
    assert meter.health.last_error == "MeterUnavailable: gone"


async def test_config_errors_are_not_retried() -> None:
    meter = MonitoredMeter(FlakyMeter([DriverConfigError("path", "bad")]))
    with pytest.raises(DriverConfigError):
        await meter.read()


def test_guard() -> None:
    g = ReadingGuard()
    g.check(Reading(10, 5, 5))
    for bad in (Reading(11, 4, 5), Reading(11, 5, 4), Reading(9, 5, 5), Reading(12, -1, 9)):
        with pytest.raises(BadReading):
            g.check(bad)
    assert g.rejected == 4
    assert g.check(Reading(10, 5, 5)) == Reading(10, 5, 5)


def test_guard_register_width_time_and_power() -> None:
    g = ReadingGuard(max_wh=1000, max_power_w=5000)
    for bad in (
        Reading(10, 1001, 0),
        Reading(10, 0, 1001),
        Reading(-1, 0, 0),
        Reading(MAX_TS + 1, 0, 0),
        Reading(10, 0, 0, 5001),
        Reading(10, 0, 0, -5001),
        Reading(10, 10**5000, 0),
    ):
        with pytest.raises(BadReading):
            g.check(bad)
    assert g.rejected == 7 and g.last is None
    assert g.check(Reading(MAX_TS, 1000, 1000, -5000)).power_w == -5000


def test_guard_jump_bound() -> None:
    g = ReadingGuard(max_power_w=3600)  # 1 Wh per second
    assert g.allowance_wh(0) == 1 + 4  # under a second, plus rounding of 4 registers
    assert g.allowance_wh(99) == 100 + 4
    assert g.allowance_wh(99, step_wh=1000) == 100 + 4000
    g.check(Reading(1000, 50, 50))
    with pytest.raises(BadReading, match="grew 105 Wh in 99 s"):
        g.check(Reading(1099, 100, 105))  # import and export together
    g.check(Reading(1099, 100, 104))
    # A refused reading never becomes the baseline.
    with pytest.raises(BadReading):
        g.check(Reading(1100, 10**6, 104))
    assert g.last == Reading(1099, 100, 104)
    # After an outage the allowance grows with the time that passed.
    g.check(Reading(1099 + 86400, 100 + 86400, 104))


def test_max_power_option_everywhere() -> None:
    for name, base in (
        ("dsmr_p1", {"serial_port": "/dev/null"}),
        ("sunspec", {"host": "x"}),
        ("csv", {"path": "x.csv"}),
        ("simulated", {}),
        ("mqtt", {"broker": "mqtt://localhost"}),
    ):
        create_driver(name, {**base, "max_power_w": 100_000})
        for bad in (0, -1, 10**9, 1.5, True):
            with pytest.raises(DriverConfigError) as info:
                create_driver(name, {**base, "max_power_w": bad})
            assert info.value.key == "max_power_w"


def test_registry() -> None:
    assert set(DRIVERS) == {"simulated", "csv", "dsmr_p1", "sunspec", "mqtt"}
    with pytest.raises(DriverConfigError) as info:
        create_driver("fake", {})
    assert info.value.key == "driver"
    with pytest.raises(DriverConfigError) as info:
        create_driver("sunspec", {"host": "x", "port": True})
    assert info.value.key == "port"
    with pytest.raises(DriverConfigError):
        create_driver("sunspec", {"host": "x", "port": 70000})
    with pytest.raises(DriverConfigError) as info:
        create_driver("sunspec", {})
    assert info.value.key == "host"


async def test_read_once_shape() -> None:
    out = await read_once("simulated", {"seed": 2, "clock": lambda: 1_751_000_000.9})
    assert out["ts"] == 1_751_000_000
    assert set(out) == {"ts", "import_wh", "export_wh", "power_w"}
    assert all(isinstance(out[k], int) for k in out)


async def test_read_once_unavailable(tmp_path: object) -> None:
    with pytest.raises(MeterUnavailable):
        await read_once("dsmr_p1", {"serial_port": "/nonexistent/tty", "timeout": 1})


def test_default_max_power_is_three_by_80_amps() -> None:
    assert DEFAULT_MAX_POWER_W == 3 * 80 * 230
