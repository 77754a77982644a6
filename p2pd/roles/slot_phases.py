"""A timer for work done at fixed offsets before each slot's gate closure.

The broker clears a slot at its gate closure, a representative submits or
offers some time before it, a client reports earlier still. Each names its
*phases* as seconds before the gate (``{"offer": 600, "buy": 300}``), and
:func:`serve_slot_phases` calls ``act(phase, slot_start)`` at
``slot_start - gate_closure - before`` on the given clock (market time, so a
simulation can run it faster or in virtual time).

Invariant: events fire in time order and none is skipped, even when an
``act`` overruns the next event's time (it then fires late): a broker must
clear every slot it took orders for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from p2pd.clock import Clock, trio_deadline

Act = Callable[[str, int], Awaitable[None]]


def next_event(after: float, slot_len: int, gate_closure: int,
               phases: Mapping[str, int]) -> tuple[int, int, str]:
    """The first ``(time, slot_start, phase)`` strictly after ``after``.

    Phases at the same time fire in the mapping's order.
    """
    best: tuple[int, int, int, str] | None = None
    for order, (name, before) in enumerate(phases.items()):
        shift = gate_closure + before
        slot = (int(after) + shift) // slot_len * slot_len + slot_len
        while slot - shift <= after:  # int() rounded a fractional ``after`` down
            slot += slot_len
        cand = (slot - shift, order, slot, name)
        if best is None or cand < best:
            best = cand
    if best is None:
        raise ValueError("no phases")
    return best[0], best[2], best[3]


async def serve_slot_phases(clock: Clock, slot_len: int, gate_closure: int, phases: Mapping[str, int],
                            act: Act, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                            ) -> None:
    """Call ``act(phase, slot_start)`` at each phase's time, forever."""
    if len(set(phases.values())) != len(phases):
        raise ValueError("two phases at the same offset")
    task_status.started()
    cursor = clock.now()
    while True:
        at, slot, name = next_event(cursor, slot_len, gate_closure, phases)
        await trio.sleep_until(trio_deadline(clock, at))
        cursor = at
        await act(name, slot)
