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
    MIN_LOOK_S,
    SETTLE_S,
    STRIKES,
    Decision,
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


def feed(pacer: Pacer, t: float, lag_wall: float, seconds: float, takes: int = 0,
         timeouts: int = 0) -> tuple[float, list[Decision]]:
    """Feed ``seconds`` of quarter-second measurements; returns (time, decisions)."""
    out: list[Decision] = []
    for _ in range(round(seconds / 0.25)):
        t += 0.25
        d = pacer.look(t, [lag_wall] * 5, takes, timeouts, 0.0)
        if d is not None:
            out.append(d)
    return t, out


def test_pacer_keeps_a_pace_the_nodes_keep_up_with() -> None:
    pacer = Pacer(2880.0, 30.0)
    _, decisions = feed(pacer, 0.0, 0.001, seconds=5 * LOOK_S, takes=10)  # 2.9 s simulated: fine
    assert decisions == [] and pacer.scale == 2880.0 and pacer.report()["changes"] == []


def test_a_fast_run_is_judged_within_a_slot_of_simulated_time() -> None:
    # At x2880 a 2 s look would be 96 simulated minutes: the morning's trades
    # lost before the first decision. A look is one slot at most (900 s, 0.31 s
    # here), but no less than MIN_LOOK_S of wall time.
    fast, slow = Pacer(2880.0, 30.0), Pacer(60.0, 30.0)
    late = 2 * LAG_LIMIT_S / 60  # wall seconds: too late at either scale
    _, decisions = feed(fast, 0.0, late, seconds=MIN_LOOK_S + 0.25)
    assert len(decisions) == 1 and fast.scale < 2880.0
    _, decisions = feed(slow, 0.0, late, seconds=MIN_LOOK_S + 0.25)
    assert decisions == []  # x60: a slot is 15 s, so the look takes LOOK_S
    _, decisions = feed(slow, MIN_LOOK_S + 0.25, late, seconds=LOOK_S)
    assert len(decisions) == 1 and slow.scale == 30.0


def test_pacer_slows_down_when_nodes_lag_then_stops_at_the_slowest_scale() -> None:
    pacer = Pacer(2880.0, 100.0)
    lag = 1.2 * LAG_LIMIT_S / 2880  # wall seconds: a bit over the limit at x2880
    t, decisions = feed(pacer, 0.0, lag, seconds=1.0)  # decided at 0.75 s (looks from 0.25 s)
    assert pacer.scale == pytest.approx(800.0) and len(decisions) == 1  # aims at a third of the limit
    # Measurements in the settling time after a change do not count: two
    # slots at x800, 2.25 s, up to t = 3.0.
    t, decisions = feed(pacer, t, 10.0, seconds=1.75)
    assert decisions == []
    t, decisions = feed(pacer, t, 1000 * LAG_LIMIT_S / 800, seconds=1.5)  # far behind; a look is a slot
    assert pacer.scale == 100.0 and len(decisions) == 1  # at most 8 times slower, never below the slowest
    # Settled at t = 8.25 (SETTLE_S), then STRIKES looks of LOOK_S at the slowest scale: stop at 14.75.
    t, decisions = feed(pacer, t, 1.0, seconds=SETTLE_S + STRIKES * (LOOK_S + 0.25) - 0.25)
    stop = [d for d in decisions if d.stop]
    assert len(stop) == 1 and "cannot keep up at x100 " in pacer.report()["stopped"]
    report = pacer.report()
    assert [round(c["to"]) for c in report["changes"]] == [800, 100]
    assert report["requested_scale"] == 2880.0 and report["final_scale"] == 100.0
    assert report["lag_max_s"] >= 100.0


def test_pacer_slows_down_when_takes_time_out() -> None:
    pacer = Pacer(2880.0, 30.0)
    _, decisions = feed(pacer, 0.0, 0.0, seconds=LOOK_S, takes=20, timeouts=5)
    assert pacer.scale == 1440.0  # by half: the lag says nothing
    assert "takes time out" in pacer.report()["changes"][0]["why"]
    assert pacer.report()["take_timeouts"] > 0


def test_pacer_never_slows_when_the_slowest_scale_is_the_scale() -> None:
    pacer = Pacer(5000.0, 5000.0)
    _, decisions = feed(pacer, 0.0, 1.0, seconds=STRIKES * (MIN_LOOK_S + 0.25))
    assert pacer.report()["changes"] == [] and pacer.stopped is not None
    assert "--min-time-scale" in pacer.stopped


def test_quantile() -> None:
    assert quantile([], 0.9) == 0.0
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile(list(map(float, range(1, 11))), 0.9) == 9.0
