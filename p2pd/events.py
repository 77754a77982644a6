"""Node events: typed, frozen, published on a bus that never blocks.

Every event is a frozen dataclass below (STYLE rule 3: one module, one base,
dispatched with ``match``/``isinstance``). ``NAME`` is its name in the
control API (``events.subscribe``, docs/control-api.md), where
:meth:`NodeEvent.to_json` gives ``{"event": NAME, field: value, ...}``.

Publishing never blocks: a subscriber that falls behind loses events
(counted in ``dropped``) rather than stalling the node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import trio


@dataclass(frozen=True)
class NodeEvent:
    """Base of every event; ``NAME`` is the control API's name for it."""

    NAME: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.NAME, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SessionOpened(NodeEvent):
    NAME: ClassVar[str] = "session_open"
    member: str
    role: str
    address: str


@dataclass(frozen=True)
class SessionClosed(NodeEvent):
    NAME: ClassVar[str] = "session_closed"
    member: str
    reason: str


@dataclass(frozen=True)
class OrderSeen(NodeEvent):
    """An order entered the book (ours, posted; or a peer's, by gossip)."""

    NAME: ClassVar[str] = "order"
    order_id: str
    member: str
    side: str
    slot_start: int
    slot_len: int
    wh: int
    price: int
    expiry: int


@dataclass(frozen=True)
class OrderCancelled(NodeEvent):
    NAME: ClassVar[str] = "cancel"
    order_id: str
    member: str


@dataclass(frozen=True)
class TradeCommitted(NodeEvent):
    """A receipt of ours was committed now (never for a retry of a stored one)."""

    NAME: ClassVar[str] = "trade"
    trade_id: str
    order_id: str
    seller: str
    buyer: str
    slot_start: int
    wh: int
    price: int
    amount: int
    role: str
    """"owner" (we countersigned a take of our order) or "taker"."""


@dataclass(frozen=True)
class MeterReading(NodeEvent):
    NAME: ClassVar[str] = "meter_reading"
    ts: int
    import_wh: int
    export_wh: int
    power_w: int | None


@dataclass(frozen=True)
class StatementSigned(NodeEvent):
    NAME: ClassVar[str] = "statement"
    slot_start: int
    trades: int
    bill: int
    saving: int
    currency: str


@dataclass(frozen=True)
class PeerAddress(NodeEvent):
    NAME: ClassVar[str] = "peer_address"
    member: str
    host: str
    port: int


@dataclass(frozen=True)
class FeedbackSent(NodeEvent):
    """We told a member to slow down (congestion feedback, docs/protocol.md §13)."""

    NAME: ClassVar[str] = "congestion_feedback"
    member: str
    category: str
    rate: float
    expires: float
    why: str


@dataclass(frozen=True)
class Banned(NodeEvent):
    NAME: ClassVar[str] = "ban"
    member: str
    until: float
    duration: float
    count: int
    category: str


@dataclass(frozen=True)
class Unbanned(NodeEvent):
    NAME: ClassVar[str] = "unban"
    member: str


@dataclass(frozen=True)
class RevocationInstalled(NodeEvent):
    NAME: ClassVar[str] = "revocation"
    issuer: str
    serial: int
    members: list[str]


@dataclass(frozen=True)
class EquivocationSeen(NodeEvent):
    """A member signed two log heads for one seq: proof held, and spread."""

    NAME: ClassVar[str] = "equivocation"
    member: str
    seq: int


@dataclass(frozen=True)
class ForkSeen(NodeEvent):
    NAME: ClassVar[str] = "fork"
    member: str
    seq: int


EVENT_TYPES: dict[str, type[NodeEvent]] = {
    cls.NAME: cls for cls in (
        SessionOpened, SessionClosed, OrderSeen, OrderCancelled, TradeCommitted, MeterReading,
        StatementSigned, PeerAddress, FeedbackSent, Banned, Unbanned, RevocationInstalled,
        EquivocationSeen, ForkSeen)
}
"""Every event by its control-API name (``events.subscribe`` accepts these)."""


class EventBus:
    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[NodeEvent]] = set()
        self.dropped = 0

    def publish(self, event: NodeEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[NodeEvent]]:
        send, receive = trio.open_memory_channel[NodeEvent](self._buffer)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()
