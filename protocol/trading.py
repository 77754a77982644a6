"""Trading objects (scenario S1): orders, cancels, trade terms and receipts.

Signed objects (docs/protocol.md, "Trading"):

* :class:`Order` — a sell offer or buy bid, signed by its owner
  (domain ``p2pd/order/1``).
* :class:`Cancel` — withdraws an order, signed by its owner
  (domain ``p2pd/cancel/1``).
* :class:`TradeTerms` — what both parties sign (domain ``p2pd/trade/1``).
* :class:`Receipt` — terms plus the seller's and the buyer's signatures.

Units: energy in Wh, prices in the community's minor currency unit per kWh,
times in unix seconds. All integers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from protocol.credentials import ID_PATTERN, Credential
from protocol.errors import SignatureError
from protocol.messages import Message, register
from protocol.pseudonyms import SEALED_MAX, OwnerCert, Pseudonym
from protocol.reasons import Reason
from protocol.schema import Bin, Fixed, Int, ListOf, Nested, OneOf, Record, Str, f
from protocol.signing import SigningKey, verify

ORDER_DOMAIN = "p2pd/order/1"
CANCEL_DOMAIN = "p2pd/cancel/1"
TRADE_DOMAIN = "p2pd/trade/1"

# The wire's bounds. They are defined here only: p2pd's config validators,
# control-method parameters and settlement import them (from ``protocol``), so
# whatever a config file or a control call may ask for, the wire accepts
# (tests/p2pd/test_bounds.py refuses a second definition).
MAX_WH = 10_000_000  # 10 MWh: more than any household sells in one slot
MAX_PRICE = 100_000_000  # minor units per kWh; anything above is absurd
MAX_TIME = 2**40
MIN_SLOT = 60
MAX_SLOT = 86_400
MAX_HOPS = 16
SNAPSHOT_MAX = 128
BATCH_MAX = 128  # items (orders plus cancels) in one GossipBatch

SIDES = ("sell", "buy")


def _id(length: int = 16) -> Bin:
    return Fixed(length)


@dataclass(frozen=True)
class Order(Record):
    """A signed sell offer or buy bid for one delivery slot."""

    order_id: bytes = f(_id())
    member_id: str = f(Str(64, ID_PATTERN))
    side: str = f(OneOf(SIDES))
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    wh: int = f(Int(1, MAX_WH))
    price: int = f(Int(1, MAX_PRICE))
    expiry: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def __post_init__(self) -> None:
        if self.slot_start % self.slot_len:
            raise ValueError("slot_start is not aligned to slot_len")
        if self.expiry > self.slot_start:
            raise ValueError("expiry after slot start")

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, order_id: bytes, member_id: str, side: str,
               slot_start: int, slot_len: int, wh: int, price: int, expiry: int) -> Order:
        """Build and sign an order. Raises LocalProtocolError/ValueError on bad fields."""
        unsigned = cls(order_id, member_id, side, slot_start, slot_len, wh, price, expiry, bytes(64))
        order = replace(unsigned, signature=key.sign(ORDER_DOMAIN, unsigned.body()))
        order.validate()
        return order

    def verify(self, sign_pk: bytes) -> None:
        """Raises SignatureError unless signed by ``sign_pk``."""
        verify(sign_pk, self.signature, ORDER_DOMAIN, self.body())


@dataclass(frozen=True)
class Cancel(Record):
    """The owner withdraws an order (what is already traded stays traded)."""

    order_id: bytes = f(_id())
    member_id: str = f(Str(64, ID_PATTERN))
    issued_at: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, order_id: bytes, member_id: str, issued_at: int) -> Cancel:
        unsigned = cls(order_id, member_id, issued_at, bytes(64))
        return replace(unsigned, signature=key.sign(CANCEL_DOMAIN, unsigned.body()))

    def verify(self, sign_pk: bytes) -> None:
        verify(sign_pk, self.signature, CANCEL_DOMAIN, self.body())


@dataclass(frozen=True)
class TradeTerms(Record):
    """What seller and buyer both sign.

    ``order_wh`` is the total energy of the order the trade draws from: with
    it, receipts from one seller that together exceed an order are provably
    double selling. ``agent`` is the representative who signed for the owner
    (empty in S1).
    """

    trade_id: bytes = f(_id())
    order_id: bytes = f(_id())
    order_wh: int = f(Int(1, MAX_WH))
    seller: str = f(Str(64, ID_PATTERN))
    buyer: str = f(Str(64, ID_PATTERN))
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    wh: int = f(Int(1, MAX_WH))
    price: int = f(Int(1, MAX_PRICE))
    created_at: int = f(Int(0, MAX_TIME))

    def __post_init__(self) -> None:
        if self.wh > self.order_wh:
            raise ValueError("trade larger than its order")
        if self.seller == self.buyer:
            raise ValueError("seller and buyer are the same member")

    def sign(self, key: SigningKey) -> bytes:
        return key.sign(TRADE_DOMAIN, self.to_wire())

    def verify(self, sign_pk: bytes, signature: bytes) -> None:
        verify(sign_pk, signature, TRADE_DOMAIN, self.to_wire())

    @property
    def amount(self) -> int:
        """Money for this trade in minor units: ``wh * price // 1000`` (floored).

        The same rule as settlement (docs/settlement.md): buyer pays exactly
        what the seller receives.
        """
        return self.wh * self.price // 1000


@dataclass(frozen=True)
class Receipt(Record):
    """Terms with both signatures: the proof of a trade."""

    terms: TradeTerms = f(Nested(TradeTerms))
    seller_sig: bytes = f(Fixed(64))
    buyer_sig: bytes = f(Fixed(64))

    def verify(self, seller_pk: bytes, buyer_pk: bytes) -> None:
        """Raises SignatureError naming the party whose signature fails."""
        try:
            self.terms.verify(seller_pk, self.seller_sig)
        except SignatureError as exc:
            raise SignatureError("seller signature does not verify") from exc
        try:
            self.terms.verify(buyer_pk, self.buyer_sig)
        except SignatureError as exc:
            raise SignatureError("buyer signature does not verify") from exc


# --- messages ------------------------------------------------------------------


@register
@dataclass(frozen=True)
class OrderGossip(Message):
    """An order with its owner's credential, forwarded while ``hops`` > 0.

    ``credential`` is a :class:`Pseudonym` for a pseudonymous order (its
    ``member_id`` is then the pseudonym's name; docs/protocol.md 12.8).
    """

    TYPE: ClassVar[int] = 32
    CATEGORY: ClassVar[str] = "gossip"
    order: Order = f(Nested(Order))
    credential: Credential | Pseudonym = f(OwnerCert())
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class CancelGossip(Message):
    TYPE: ClassVar[int] = 33
    CATEGORY: ClassVar[str] = "gossip"
    cancel: Cancel = f(Nested(Cancel))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class OrdersRequest(Message):
    """Ask a peer for its live orders (sent once when a session opens)."""

    TYPE: ClassVar[int] = 34
    CATEGORY: ClassVar[str] = "gossip"


@register
@dataclass(frozen=True)
class OrdersSnapshot(Message):
    """Up to SNAPSHOT_MAX live orders with their owners' credentials."""

    TYPE: ClassVar[int] = 35
    CATEGORY: ClassVar[str] = "gossip"
    orders: tuple[OrderGossip, ...] = f(ListOf(Nested(OrderGossip), SNAPSHOT_MAX))


@register
@dataclass(frozen=True)
class Take(Message):
    """The taker's signed terms, sent to the order's owner."""

    TYPE: ClassVar[int] = 36
    CATEGORY: ClassVar[str] = "trade"
    terms: TradeTerms = f(Nested(TradeTerms))
    taker_sig: bytes = f(Fixed(64))


@register
@dataclass(frozen=True)
class TradeAccepted(Message):
    """The owner's answer once the receipt is committed: the full receipt."""

    TYPE: ClassVar[int] = 37
    CATEGORY: ClassVar[str] = "trade"
    receipt: Receipt = f(Nested(Receipt))


@register
@dataclass(frozen=True)
class TradeRefused(Message):
    """The owner refuses a take; ``remaining_wh`` is what is left of the order."""

    TYPE: ClassVar[int] = 38
    CATEGORY: ClassVar[str] = "trade"
    trade_id: bytes = f(_id())
    reason: int = f(Int(0, 255))
    remaining_wh: int = f(Int(0, MAX_WH))
    message: str = f(Str(200))

    @property
    def reason_code(self) -> Reason:
        try:
            return Reason(self.reason)
        except ValueError:
            return Reason.PROTOCOL_ERROR


GOSSIP_NONE = 0  # no gossip on this session, either way (a session opened only to trade)
GOSSIP_ALL = 1  # forward me every gossip item (the default, also without any GossipControl)
GOSSIP_SOME = 2  # I have other gossip links: you may leave me out when you limit your fan-out


@register
@dataclass(frozen=True)
class GossipControl(Message):
    """How much gossip the sender wants on this session (type 39).

    ``mode`` is GOSSIP_NONE, GOSSIP_ALL or GOSSIP_SOME; the latest one sent
    holds. Any GossipControl also tells the receiver that the sender accepts
    :class:`GossipBatch` on this session.
    """

    TYPE: ClassVar[int] = 39
    CATEGORY: ClassVar[str] = "control"
    mode: int = f(Int(GOSSIP_NONE, GOSSIP_SOME))


@register
@dataclass(frozen=True)
class GossipBatch(Message):
    """Several gossip items in one frame, each processed as if sent alone (type 40).

    Orders are processed first, then cancels. At most BATCH_MAX items in all.
    """

    TYPE: ClassVar[int] = 40
    CATEGORY: ClassVar[str] = "gossip"
    orders: tuple[OrderGossip, ...] = f(ListOf(Nested(OrderGossip), BATCH_MAX))
    cancels: tuple[CancelGossip, ...] = f(ListOf(Nested(CancelGossip), BATCH_MAX))

    def __post_init__(self) -> None:
        if len(self.orders) + len(self.cancels) > BATCH_MAX:
            raise ValueError(f"more than {BATCH_MAX} items in a gossip batch")

    def policing_cost(self) -> int:
        # Each item costs what it would cost sent alone: batching saves
        # frames, it must not multiply a sender's gossip allowance.
        return max(1, len(self.orders) + len(self.cancels))


# --- pseudonymous orders (docs/protocol.md 12.8) ---------------------------------------


@register
@dataclass(frozen=True)
class TakeIntent(Message):
    """A taker asks a pseudonymous order's owner to open a session with it (type 44).

    Relayed hop by hop back along the path the order came. ``sealed`` holds
    the taker's member id, sealed to the order's pseudonym (Noise N).
    """

    TYPE: ClassVar[int] = 44
    CATEGORY: ClassVar[str] = "gossip"
    order_id: bytes = f(_id())
    intent_id: bytes = f(_id())
    sealed: bytes = f(Bin(48, SEALED_MAX))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class OwnerProof(Message):
    """The owner shows the taker, in their session, that the order's pseudonym is its own (type 45)."""

    TYPE: ClassVar[int] = 45
    CATEGORY: ClassVar[str] = "trade"
    order_id: bytes = f(_id())
    signature: bytes = f(Fixed(64))


def parties(order: Order, taker: str, owner: str | None = None) -> tuple[str, str]:
    """(seller, buyer) of a trade against ``order`` taken by ``taker``.

    ``owner`` is the member behind a pseudonymous order (whose ``member_id``
    is only the pseudonym's name); by default the order's ``member_id``.
    """
    owner = order.member_id if owner is None else owner
    return (owner, taker) if order.side == "sell" else (taker, owner)


