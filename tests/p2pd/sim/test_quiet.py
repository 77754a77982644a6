"""until() (p2pd/sim/quiet.py) and the tests' eventually(): looks taken at quiet moments, no timers."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from p2pd_test_helpers import eventually

from p2pd.sim.quiet import until


class Looks:
    """A predicate over ``state`` that counts how often it was evaluated."""

    def __init__(self) -> None:
        self.state: list[str] = []
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return bool(self.state)


async def test_true_at_once_needs_no_time(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await until(lambda: True)
    assert trio.current_time() == start


async def test_virtual_time_jumps_straight_to_the_deadline_that_makes_it_true(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    looks = Looks()

    async def later() -> None:
        await trio.sleep(42)
        looks.state.append("done")

    nursery.start_soon(later)
    start = trio.current_time()
    await until(looks)
    assert trio.current_time() - start == 42
    # At once, when the sleeper blocked, and after its step: no poll ticks in between.
    assert looks.count <= 3


async def test_two_waiters_do_not_wake_each_other(autojump_clock: trio.testing.MockClock) -> None:
    a, b = Looks(), Looks()
    with trio.move_on_after(10):
        async with trio.open_nursery() as waiters:
            waiters.start_soon(until, a)
            waiters.start_soon(until, b)
    assert a.count <= 3 and b.count <= 3


async def test_a_worker_threads_result_is_seen_on_the_real_clock(nursery: trio.Nursery) -> None:
    looks = Looks()

    async def work() -> None:
        await trio.to_thread.run_sync(time.sleep, 0.05)
        looks.state.append("done")

    nursery.start_soon(work)
    with trio.fail_after(5):
        await until(looks)
    assert looks.count <= 4


async def test_eventually_fails_quoting_the_predicate(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    never: list[str] = []
    with pytest.raises(AssertionError, match=r"within 2.0 s: .*test_quiet.py:\d+: .*lambda: never"):
        await eventually(lambda: never, within=2.0)
    assert trio.current_time() - start == 2.0
