"""Waiting until a condition holds in a program of many tasks, without polling.

The simulator's attacks, the tests (``eventually`` in tests/helpers.py) and
the benchmarks wait for a message to spread, a ban to be stored, a session to
open. Sleeping a fixed time and looking again is slow where it is long, flaky
where it is short, and under an autojumping ``MockClock`` every short sleep
is one more step of virtual time to schedule. :func:`until` looks at the
condition only when trio is quiet (no task can run), and between two looks it
waits for another task to run a step: nothing else can change what the
condition reads. It never sets a timer of its own, so:

* under ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``,
  ``p2pd sim`` in virtual time) the clock jumps straight to the next deadline
  of the code under test, and a wait costs no real time;
* on the real clock it sleeps until I/O, a worker thread or a timer wakes a
  task, and never spins.

The condition must read state that tasks change (a worker thread's result
counts once it is handed back to its task). One that turns true only because
time passed, while no task ran, is never seen: sleep for that instead.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

# Tasks waiting in until(). Their steps only evaluate a condition, so they
# change nothing another waiter reads; and two waiters woken by each other's
# steps would wake each other forever.
_waiting: set[trio.lowlevel.Task] = set()


class _Stirred(trio.abc.Instrument):
    """Sets ``event`` after each step of a task that is not waiting in until()."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task not in _waiting:
            self.event.set()


async def until(predicate: Callable[[], object]) -> None:
    """Return once ``predicate()`` is true: at once if it is, else at a quiet moment.

    Waits for ever otherwise: bound it with ``trio.fail_after`` or
    ``trio.move_on_after``. Raises whatever ``predicate`` raises.
    """
    if predicate():
        await trio.lowlevel.checkpoint()
        return
    task = trio.lowlevel.current_task()
    stirred = _Stirred()
    _waiting.add(task)
    trio.lowlevel.add_instrument(stirred)
    try:
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if predicate():
                return
            # Everything is blocked and the answer is still no: let time pass
            # (a deadline, I/O, a thread) until some task runs, then look again.
            stirred.event = trio.Event()
            await stirred.event.wait()
    finally:
        trio.lowlevel.remove_instrument(stirred)
        _waiting.discard(task)
