"""Broker messages (S3, S4): submitting orders, clearing, matches, the public book.

A broker runs one uniform-price auction per delivery slot (p2pd/market/clearing.py).
Orders are :class:`~protocol.delegation.AgentOrder` objects signed by the
submitting agent. After gate closure the broker proposes each match to both
sides (``MatchPropose``, signed by the broker over ``p2pd/trade/2`` terms),
each side countersigns only a match against its own signed order at a price
within that order's limit (``MatchSign``), and the broker returns the receipt
carrying all three signatures (``MatchFinal``). It then publishes the book
(``BookChunk``) and a signed :class:`ClearingSummary` so that anyone can re-run
the clearing. docs/protocol.md section 15.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from protocol.credentials import ID_PATTERN, Credential
from protocol.delegation import AgentOrder, AgentReceipt, AgentTerms, Delegation
from protocol.messages import Message, register
from protocol.schema import Fixed, Int, ListOf, Nested, Optional, Record, Str, f
from protocol.signing import SigningKey, verify
from protocol.trading import MAX_PRICE, MAX_SLOT, MAX_TIME, MIN_SLOT

CLEARING_DOMAIN = "p2pd/clearing/1"
BOOK_CHUNK_MAX = 256


@dataclass(frozen=True)
class ClearingSummary(Record):
    """The broker's signed statement of one slot's auction.

    ``book_hash`` commits to the orders (p2pd.market.clearing.book_hash over their
    encodings), ``result_hash`` to the matches (ClearingResult.result_hash).
    ``price`` is 0 when nothing crossed.
    """

    broker: str = f(Str(64, ID_PATTERN))
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    orders: int = f(Int(0, 2**32 - 1))
    book_hash: bytes = f(Fixed(32))
    result_hash: bytes = f(Fixed(32))
    price: int = f(Int(0, MAX_PRICE))
    volume_wh: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, **fields: object) -> ClearingSummary:
        unsigned = cls(**fields, signature=bytes(64))  # type: ignore[arg-type]
        return replace(unsigned, signature=key.sign(CLEARING_DOMAIN, unsigned.body()))

    def verify(self, broker_pk: bytes) -> None:
        verify(broker_pk, self.signature, CLEARING_DOMAIN, self.body())


@register
@dataclass(frozen=True)
class BrokerSubmit(Message):
    """An agent submits a signed order to the broker over a direct session."""

    TYPE: ClassVar[int] = 72
    CATEGORY: ClassVar[str] = "trade"
    order: AgentOrder = f(Nested(AgentOrder))
    delegation: Delegation | None = f(Optional(Nested(Delegation)))


@register
@dataclass(frozen=True)
class BrokerAccepted(Message):
    """The order is in the slot's book (a refusal is AgentRefused with the order id)."""

    TYPE: ClassVar[int] = 73
    CATEGORY: ClassVar[str] = "trade"
    order_id: bytes = f(Fixed(16))


@register
@dataclass(frozen=True)
class MatchPropose(Message):
    """A match the broker asks one side to countersign, with the other side's credential."""

    TYPE: ClassVar[int] = 74
    CATEGORY: ClassVar[str] = "trade"
    terms: AgentTerms = f(Nested(AgentTerms))
    book_hash: bytes = f(Fixed(32))
    broker_sig: bytes = f(Fixed(64))
    counterparty: Credential = f(Nested(Credential))


@register
@dataclass(frozen=True)
class MatchSign(Message):
    """A side's signature over the proposed terms."""

    TYPE: ClassVar[int] = 75
    CATEGORY: ClassVar[str] = "trade"
    trade_id: bytes = f(Fixed(16))
    signature: bytes = f(Fixed(64))


@register
@dataclass(frozen=True)
class MatchFinal(Message):
    """The receipt with the broker's and both sides' signatures."""

    TYPE: ClassVar[int] = 76
    CATEGORY: ClassVar[str] = "trade"
    receipt: AgentReceipt = f(Nested(AgentReceipt))


@register
@dataclass(frozen=True)
class ClearingAnnounce(Message):
    TYPE: ClassVar[int] = 77
    CATEGORY: ClassVar[str] = "gossip"
    summary: ClearingSummary = f(Nested(ClearingSummary))


@register
@dataclass(frozen=True)
class BookChunk(Message):
    """Up to BOOK_CHUNK_MAX orders of one slot's closed book."""

    TYPE: ClassVar[int] = 78
    CATEGORY: ClassVar[str] = "gossip"
    slot_start: int = f(Int(0, MAX_TIME))
    orders: tuple[AgentOrder, ...] = f(ListOf(Nested(AgentOrder), BOOK_CHUNK_MAX))
