from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_drivers import Reading, SimulatedMeter
from p2pd.market.forecast import DAY, forecast_horizon, forecast_net, net_by_slot

S = 900
NOW = 100 * DAY + 10 * 3600 + 120  # 10:02 on some day: last completed slot 09:45


def test_blend_of_yesterday_and_recent() -> None:
    target = 100 * DAY + 10 * 3600 + 15 * 60  # 10:15
    history = {
        target - DAY: -400,  # yesterday 10:15: 400 Wh surplus
        NOW // S * S - S: -100,  # 09:45
        NOW // S * S - 2 * S: -60,  # 09:30
        NOW // S * S - 3 * S: -50,
        NOW // S * S - 4 * S: -30,  # mean of last 4: -60
        NOW // S * S - 5 * S: 5000,  # too old to count
    }
    assert forecast_net(history, target, now=NOW, slot_seconds=S) == (-400 + -60) // 2
    assert forecast_net(history, target, now=NOW, slot_seconds=S, yesterday_weight_pct=100) == -400
    assert forecast_net(history, target, now=NOW, slot_seconds=S, yesterday_weight_pct=0) == -60
    assert forecast_net(history, target, now=NOW, slot_seconds=S, recent_slots=2) == -240
    # 75% of -400 + 25% of -80 = -320
    assert forecast_net(history, target, now=NOW, slot_seconds=S, recent_slots=2, yesterday_weight_pct=75) == -320


def test_fallbacks_and_no_future() -> None:
    target = NOW // S * S + S
    assert forecast_net({}, target, now=NOW, slot_seconds=S) is None
    assert forecast_net({target - DAY: 7}, target, now=NOW, slot_seconds=S) == 7
    assert forecast_net({NOW // S * S - S: 3, NOW // S * S - 2 * S: 4}, target, now=NOW, slot_seconds=S) == 4
    # The slot in progress has not completed: ignored.
    assert forecast_net({NOW // S * S: 99}, target, now=NOW, slot_seconds=S) is None
    # "Yesterday" for a slot more than a day ahead lies in the future.
    far = target + DAY
    assert forecast_net({far - DAY: 5}, far, now=NOW, slot_seconds=S) is None


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        forecast_net({}, 0, now=0, slot_seconds=0)
    with pytest.raises(ValueError):
        forecast_net({}, 0, now=0, slot_seconds=S, yesterday_weight_pct=101)


def test_net_by_slot_from_readings() -> None:
    readings = [Reading(0, 0, 0), Reading(450, 100, 0), Reading(1800, 100, 300), Reading(2000, 150, 300)]
    # At 900 the export register is interpolated: 300 * 450 // 1350 = 100.
    # Slot 0: +100 in, 100 out; slot 900: 200 out; slot 1800 is not complete.
    assert net_by_slot(readings, S) == {0: 100 - 100, 900: -200}


@given(st.lists(st.integers(-5000, 5000), min_size=1, max_size=8), st.integers(-5000, 5000), st.integers(0, 100))
def test_forecast_between_inputs(recent: list[int], yesterday: int, w: int) -> None:
    last = NOW // S * S - S
    history = {last - i * S: v for i, v in enumerate(recent)}
    target = NOW // S * S + 2 * S
    history[target - DAY] = yesterday
    f = forecast_net(history, target, now=NOW, slot_seconds=S, recent_slots=len(recent), yesterday_weight_pct=w)
    assert f is not None
    assert min(recent + [yesterday]) <= f <= max(recent + [yesterday])


def test_horizon_on_simulated_household() -> None:
    origin = 1751068800 - 86400  # 2025-06-27 00:00 UTC
    meter = SimulatedMeter({"seed": 4, "member": 2, "origin": origin})
    readings = [meter.reading_at(origin + k * 60) for k in range(2 * 1440)]
    history = net_by_slot(readings, S)
    now = origin + DAY + 11 * 3600 + 5
    out = forecast_horizon(history, now=now, slot_seconds=S, count=8)
    assert list(out) == [origin + DAY + 11 * 3600 + i * S for i in range(8)]
    assert all(v is not None and v < 0 for v in out.values())  # summer late morning: surplus
