"""The wall-clock mode's pacing (p2pd/sim/pace.py): a clock that slows without a jump, and the pacer.

The clock runs under ``autojump_clock``; the pacer is fed measurements
directly (it is plain code: wall time and lags come in as arguments). The
end-to-end runs that slow down or stop are in test_sim_tcp.py.
"""

from __future__ import annotations

import time

import pytest
import trio

from p2pd.sim.pace import (
    LAG_LIMIT_S,
    LOOK_S,
    SETTLE_S,
    STRIKES,
    LagProbe,
    Pacer,
    SimClock,
    quantile,
)


async def test_sim_clock_changes_scale_at_a_trio_time_without_a_jump(autojump_clock: trio.abc.Clock) -> None:
    clock = SimClock(1000.0, 100.0)
    await trio.sleep(1)
    assert clock.now() == pytest.approx(1100.0)
    switch = trio.current_time() + 2
    clock.rescale(10.0, at=switch)
    await trio.sleep(1)
    assert clock.now() == pytest.approx(1200.0) and clock.scale == 100.0  # not yet
    await trio.sleep(1)
    assert clock.now() == pytest.approx(1300.0) and clock.scale == 10.0  # continuous at the switch
    await trio.sleep(3)
    assert clock.now() == pytest.approx(1330.0)
    clock.rescale(1.0)  # now
    await trio.sleep(5)
    assert clock.now() == pytest.approx(1335.0)
    with pytest.raises(ValueError):
        clock.rescale(0)


async def test_lag_probe_measures_a_blocked_loop() -> None:
    # Real time by nature: the probe measures how late the event loop wakes a
    # sleeper. The loop is blocked on purpose for 0.2 s; nothing waits for an event.
    probe = LagProbe(interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run)
        await trio.sleep(0.02)
        time.sleep(0.2)  # noqa: ASYNC251 - the point: a loop busy with something else
        await trio.sleep(0.03)
        samples = probe.take()
        nursery.cancel_scope.cancel()
    assert max(samples) >= 0.15 and probe.take() == []


def feed(pacer: Pacer, t: float, lag_wall: float, looks: int = 1, takes: int = 0,
         timeouts: int = 0) -> tuple[float, list[object]]:
    """Feed ``looks`` decisions' worth of quarter-second measurements; returns (time, decisions)."""
    out: list[object] = []
    for _ in range(looks):
        for _ in range(int(LOOK_S / 0.25) + 1):
            t += 0.25
            d = pacer.look(t, [lag_wall] * 5, takes, timeouts, 0.0)
            if d is not None:
                out.append(d)
    return t, out


def test_pacer_keeps_a_pace_the_nodes_keep_up_with() -> None:
    pacer = Pacer(2880.0, 30.0)
    _, decisions = feed(pacer, 0.0, 0.001, looks=5, takes=10)  # 2.9 s simulated: fine
    assert decisions == [] and pacer.scale == 2880.0 and pacer.report()["changes"] == []


def test_pacer_slows_down_when_nodes_lag_then_stops_at_the_slowest_scale() -> None:
    pacer = Pacer(2880.0, 720.0)
    lag = 2 * LAG_LIMIT_S / 2880  # wall seconds: twice the limit at x2880
    t, decisions = feed(pacer, 0.0, lag)
    assert pacer.scale == 1440.0 and len(decisions) == 1
    # Measurements in the settling time after a change do not count.
    t, decisions = feed(pacer, t, 10.0, looks=int(SETTLE_S / LOOK_S) - 1)
    assert decisions == []
    t += SETTLE_S
    t, decisions = feed(pacer, t, 100 * LAG_LIMIT_S / 1440)  # far behind: divided by more than 2
    assert pacer.scale == 720.0  # but never below the slowest allowed
    t += SETTLE_S
    t, decisions = feed(pacer, t, 1.0, looks=STRIKES)
    stop = [d for d in decisions if getattr(d, "stop", None)]
    assert len(stop) == 1 and "cannot keep up at x720" in pacer.report()["stopped"]
    report = pacer.report()
    assert [c["to"] for c in report["changes"]] == [1440.0, 720.0]
    assert report["requested_scale"] == 2880.0 and report["final_scale"] == 720.0
    assert report["lag_max_s"] >= 720.0


def test_pacer_slows_down_when_takes_time_out() -> None:
    pacer = Pacer(2880.0, 30.0)
    _, decisions = feed(pacer, 0.0, 0.0, takes=20, timeouts=5)
    assert pacer.scale == 1440.0 and "takes time out" in pacer.report()["changes"][0]["why"]
    assert pacer.report()["take_timeouts"] > 0


def test_pacer_never_slows_when_the_slowest_scale_is_the_scale() -> None:
    pacer = Pacer(5000.0, 5000.0)
    _, decisions = feed(pacer, 0.0, 1.0, looks=STRIKES)
    assert pacer.report()["changes"] == [] and pacer.stopped is not None
    assert "--min-time-scale" in pacer.stopped


def test_quantile() -> None:
    assert quantile([], 0.9) == 0.0
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile(list(map(float, range(1, 11))), 0.9) == 9.0
