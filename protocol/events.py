"""Events a :class:`~protocol.session.Session` hands to its caller.

Application messages (``protocol.messages``) are events too: they subclass
:class:`Event` through :class:`~protocol.messages.Message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.credentials import Credential
from protocol.reasons import Reason


class Event:
    """Base class of everything ``Session.next_event`` returns."""

    __slots__ = ()


@dataclass(frozen=True)
class HandshakeComplete(Event):
    """The Noise handshake finished and the peer's credential was accepted.

    ``peer`` is the verified credential; ``handshake_hash`` is the Noise
    handshake hash h, unique to this session (used as a channel binding).
    """

    peer: Credential
    handshake_hash: bytes


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The session ended. ``by_peer`` is True if the peer sent Close or EOF."""

    reason: Reason
    message: str
    by_peer: bool


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by ``next_event`` when no complete event is buffered."""
