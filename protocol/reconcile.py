"""Reconciliation: two members compare the receipts they hold with each other.

A receipt is committed by the order's owner before the taker learns of it,
so a crash, a lost answer or a full disk can leave it on one side only. When a
session opens (and every reconcile interval while they trade), each side
offers the ids of the receipts it holds *with the other* since a point in
time (:class:`HoldingsOffer`); the other asks for the ones it lacks
(:class:`ReceiptsRequest`) and gets them (:class:`ReceiptsDelivery`), checks
their signatures and commits them. docs/protocol.md section 12.7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.messages import Message, register
from protocol.receipt_log import MAX_RECEIPT_BYTES, RECEIPT_V1, RECEIPT_V2
from protocol.schema import Bin, Bool, Fixed, Int, ListOf, Nested, Record, f
from protocol.trading import MAX_TIME

OFFER_MAX = 256  # trade ids in one HoldingsOffer
REQUEST_MAX = 64  # trade ids in one ReceiptsRequest
DELIVERY_MAX = 8  # receipts in one ReceiptsDelivery (8 x 4 KiB fits a frame)


@register
@dataclass(frozen=True)
class HoldingsOffer(Message):
    """Ids of the receipts the sender holds of trades with the receiver since ``since``.

    "With the receiver": the receiver is the receipt's seller or buyer (v1)
    or one of its two agents (v2). Several offers may follow each other;
    ``last`` marks the final one of a round.
    """

    TYPE: ClassVar[int] = 41
    CATEGORY: ClassVar[str] = "trade"
    since: int = f(Int(0, MAX_TIME))
    trade_ids: tuple[bytes, ...] = f(ListOf(Fixed(16), OFFER_MAX))
    last: bool = f(Bool())


@register
@dataclass(frozen=True)
class ReceiptsRequest(Message):
    """Send me these receipts (ids from your offer that I do not hold)."""

    TYPE: ClassVar[int] = 42
    CATEGORY: ClassVar[str] = "trade"
    trade_ids: tuple[bytes, ...] = f(ListOf(Fixed(16), REQUEST_MAX))


@dataclass(frozen=True)
class HeldReceipt(Record):
    """One receipt as delivered: its kind (1: S1 receipt, 2: agent receipt) and bytes."""

    kind: int = f(Int(RECEIPT_V1, RECEIPT_V2))
    receipt: bytes = f(Bin(1, MAX_RECEIPT_BYTES))


@register
@dataclass(frozen=True)
class ReceiptsDelivery(Message):
    """Receipts the receiver asked for; only ones of trades with the receiver."""

    TYPE: ClassVar[int] = 43
    CATEGORY: ClassVar[str] = "trade"
    receipts: tuple[HeldReceipt, ...] = f(ListOf(Nested(HeldReceipt), DELIVERY_MAX))
