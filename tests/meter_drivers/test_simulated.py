from __future__ import annotations

from itertools import pairwise

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_drivers import BadReading, DriverConfigError, SimulatedMeter, open_driver

JUNE_27 = 1751068800 - 86400  # 2025-06-27 00:00 UTC
JAN_1 = 1735689600  # 2025-01-01 00:00 UTC


def test_deterministic_and_member_specific() -> None:
    a = SimulatedMeter({"seed": 7, "member": 1, "origin": JUNE_27})
    b = SimulatedMeter({"seed": 7, "member": 1, "origin": JUNE_27})
    c = SimulatedMeter({"seed": 7, "member": 2, "origin": JUNE_27})
    times = [JUNE_27 + k * 3607 for k in range(30)]
    assert [a.reading_at(t) for t in times] == [b.reading_at(t) for t in reversed(times)][::-1]
    assert [a.reading_at(t) for t in times] != [c.reading_at(t) for t in times]


@pytest.mark.parametrize("member", range(6))
def test_consumer_daily_consumption_is_realistic(member: int) -> None:
    m = SimulatedMeter({"seed": 1, "member": member, "kind": "consumer", "origin": JAN_1})
    days = [m.reading_at(JAN_1 + d * 86400) for d in range(8)]
    for prev, cur in pairwise(days):
        assert 6_000 <= cur.import_wh - prev.import_wh <= 14_500
        assert cur.export_wh == prev.export_wh == 0


def test_pv_peaks_near_noon_in_summer() -> None:
    m = SimulatedMeter({"seed": 3, "member": 0, "pv_kwp": 4.0, "origin": JUNE_27})
    pv = m.profile(JUNE_27 // 86400).pv_w
    peak = max(pv)
    assert 1_000 <= peak <= 3_300
    assert 10 * 60 <= pv.index(peak) <= 14 * 60
    assert pv[0] == pv[23 * 60] == 0
    winter = m.profile(JAN_1 // 86400).pv_w
    assert max(winter) < peak and winter[7 * 60] == 0  # 07:00 UTC in January: dark


def test_origin_mid_day_starts_at_opening_register() -> None:
    start = JUNE_27 + 12 * 3600 + 30
    m = SimulatedMeter({"seed": 3, "origin": start})
    r = m.reading_at(start)
    assert (r.import_wh, r.export_wh) == (m.opening_import_wh, m.opening_export_wh)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3 * 86400), min_size=2, max_size=20))
def test_registers_never_decrease(offsets: list[int]) -> None:
    m = SimulatedMeter({"seed": 11, "member": 4, "origin": JUNE_27})
    readings = [m.reading_at(JUNE_27 + o) for o in sorted(offsets)]
    for prev, cur in pairwise(readings):
        assert cur.import_wh >= prev.import_wh and cur.export_wh >= prev.export_wh


async def test_simulated_day_runs_on_simulated_clock(autojump_clock: trio.abc.Clock) -> None:
    # The meter's clock runs 3600x faster than the trio clock: a day in 24 s.
    start = trio.current_time()

    def clock() -> float:
        return JUNE_27 + (trio.current_time() - start) * 3600

    options = {"seed": 5, "clock": clock, "interval": 0.25, "origin": JUNE_27}
    async with open_driver("simulated", options) as meter:
        readings = [await meter.read() for _ in range(96)]  # one per 15 simulated minutes
    assert readings[-1].ts - readings[0].ts == 95 * 900
    net = [r.power_w for r in readings]
    assert min(x for x in net if x is not None) < 0  # exports around midday


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"kind": "battery"}, "kind"),
        ({"daily_kwh": 0}, "daily_kwh"),
        ({"seed": 1.5}, "seed"),
        ({"clock": 5}, "clock"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options(options: dict[str, object], key: str) -> None:
    with pytest.raises(DriverConfigError) as info:
        SimulatedMeter(options)
    assert info.value.key == key


async def test_read_passes_the_guard() -> None:
    now = [float(JUNE_27 + 12 * 3600)]
    m = SimulatedMeter({"seed": 3, "origin": JUNE_27, "clock": lambda: now[0]})
    first = await m.read()
    now[0] -= 60  # the host clock stepped back
    with pytest.raises(BadReading, match="backwards"):
        await m.read()
    assert m.guard.rejected == 1 and m.guard.last == first
    now[0] += 3600
    assert (await m.read()).ts == first.ts + 3540


def test_guard_bound_covers_the_model() -> None:
    assert SimulatedMeter({}).guard.max_power_w >= 55_200
    big = SimulatedMeter({"daily_kwh": 200, "pv_kwp": 100})
    assert big.guard.max_power_w == 200 * 6_900
    assert SimulatedMeter({"max_power_w": 9_000}).guard.max_power_w == 9_000
    # The bound holds for the heaviest household the options allow.
    worst = max(max(big.profile(day).load_w) for day in range(20_000, 20_010))
    assert worst <= big.guard.max_power_w
