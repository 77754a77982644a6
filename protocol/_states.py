"""Session states and the allowed transitions.

Rule 1: only session.py changes a session's state; everything else reads it.
Rule 2: every path out of the handshake states ends in ESTABLISHED or CLOSED;
nothing returns to an earlier state.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AWAIT_MSG1 = "await_msg1"  # responder, nothing received yet
    AWAIT_MSG2 = "await_msg2"  # initiator, msg1 sent
    AWAIT_MSG3 = "await_msg3"  # responder, msg2 sent
    ESTABLISHED = "established"
    CLOSED = "closed"


HANDSHAKE_STATES = frozenset({State.AWAIT_MSG1, State.AWAIT_MSG2, State.AWAIT_MSG3})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAIT_MSG1: frozenset({State.AWAIT_MSG3, State.CLOSED}),
    State.AWAIT_MSG2: frozenset({State.ESTABLISHED, State.CLOSED}),
    State.AWAIT_MSG3: frozenset({State.ESTABLISHED, State.CLOSED}),
    State.ESTABLISHED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}
