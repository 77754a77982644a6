"""Announcing gossip items by id: GossipLink, GossipHave, GossipWant.

Flooding sends every order and cancel body over every gossip session, so a
node receives each item once per neighbour. With these messages a session is
either *eager* (bodies are pushed over it, as before) or *lazy* (only the ids
of new items are announced, :class:`GossipHave`, and the receiver asks for
the bodies it lacks, :class:`GossipWant`). A node makes a session lazy, both
ways, with ``GossipLink(eager=False)`` when a body it already holds arrives
over it, and eager again, ``GossipLink(eager=True)``, when an announcement
shows it missed something. The eager sessions then form a spanning tree, and
each body reaches each node about once (Plumtree: Leitão, Pereira and
Rodrigues, "Epidemic Broadcast Trees", SRDS 2007). docs/protocol.md §12.3.

Ids travel packed: a bin of 16·k bytes holds k ids, so an announcement of
many items costs one value to decode, not one per id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from protocol.messages import Message, register
from protocol.schema import Bin, Bool, Int, ListOf, Nested, Record, f
from protocol.trading import MAX_TIME

ID_LEN = 16
IDS_MAX = 256  # ids in one GossipHave or GossipWant (orders and cancels together)
HAVE_SLOTS_MAX = 64  # slots in one GossipHave


def pack_ids(ids: Iterable[bytes]) -> bytes:
    """Concatenate 16-byte ids into the wire's packed form."""
    return b"".join(ids)


def unpack_ids(packed: bytes) -> list[bytes]:
    """The ids in a packed bin (its length is a multiple of 16: checked on decode)."""
    return [packed[i : i + ID_LEN] for i in range(0, len(packed), ID_LEN)]


def _check_packed(packed: bytes, what: str) -> int:
    if len(packed) % ID_LEN:
        raise ValueError(f"{what}: {len(packed)} bytes is not a whole number of {ID_LEN}-byte ids")
    return len(packed) // ID_LEN


@dataclass(frozen=True)
class SlotIds(Record):
    """Ids of orders for one delivery slot."""

    slot_start: int = f(Int(0, MAX_TIME))
    order_ids: bytes = f(Bin(ID_LEN, ID_LEN * IDS_MAX))

    def __post_init__(self) -> None:
        _check_packed(self.order_ids, "order_ids")


@register
@dataclass(frozen=True)
class GossipLink(Message):
    """Whether this gossip session carries item bodies (eager) or only their ids (type 51).

    Applies to both directions, from when it is received. Any GossipLink
    also declares that its sender takes :class:`GossipHave` and
    :class:`GossipWant` on the session.
    """

    TYPE: ClassVar[int] = 51
    CATEGORY: ClassVar[str] = "control"
    eager: bool = f(Bool())


@register
@dataclass(frozen=True)
class GossipHave(Message):
    """Ids of orders (grouped by slot) and cancels the sender accepted lately (type 52)."""

    TYPE: ClassVar[int] = 52
    CATEGORY: ClassVar[str] = "gossip"
    slots: tuple[SlotIds, ...] = f(ListOf(Nested(SlotIds), HAVE_SLOTS_MAX))
    cancel_ids: bytes = f(Bin(0, ID_LEN * IDS_MAX))

    def __post_init__(self) -> None:
        total = _check_packed(self.cancel_ids, "cancel_ids")
        total += sum(len(s.order_ids) // ID_LEN for s in self.slots)
        if total > IDS_MAX:
            raise ValueError(f"more than {IDS_MAX} ids in a GossipHave")

    def orders(self) -> list[tuple[int, bytes]]:
        """(slot_start, order_id) of every announced order."""
        return [(s.slot_start, oid) for s in self.slots for oid in unpack_ids(s.order_ids)]

    def cancels(self) -> list[bytes]:
        return unpack_ids(self.cancel_ids)


@register
@dataclass(frozen=True)
class GossipWant(Message):
    """Send me the bodies of these orders and cancels (type 53).

    Answered with ``GossipBatch`` messages holding those the receiver has.
    Costs the policer one per id, like the items it asks for.
    """

    TYPE: ClassVar[int] = 53
    CATEGORY: ClassVar[str] = "gossip"
    order_ids: bytes = f(Bin(0, ID_LEN * IDS_MAX))
    cancel_ids: bytes = f(Bin(0, ID_LEN * IDS_MAX))

    def __post_init__(self) -> None:
        total = _check_packed(self.order_ids, "order_ids") + _check_packed(self.cancel_ids, "cancel_ids")
        if total > IDS_MAX:
            raise ValueError(f"more than {IDS_MAX} ids in a GossipWant")

    def orders(self) -> list[bytes]:
        return unpack_ids(self.order_ids)

    def cancels(self) -> list[bytes]:
        return unpack_ids(self.cancel_ids)

    def policing_cost(self) -> int:
        return max(1, (len(self.order_ids) + len(self.cancel_ids)) // ID_LEN)
