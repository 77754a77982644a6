"""Representatives (S2, S3): delegations, revocations, meter reports, agent trades.

Signed objects (docs/protocol.md section 15):

* :class:`Delegation` — a principal lets an agent (a representative) trade
  for it within bounds (domain ``p2pd/delegation/1``, signed by the principal).
* :class:`DelegationRevoke` — withdraws a delegation (``p2pd/delegation-revoke/1``).
* :class:`MeterReport` — what a client chooses to tell its representative
  about a slot (``p2pd/meter-report/1``); the representative's only window
  onto the client's meter.
* :class:`AgentOrder` — an order signed by an agent for a principal
  (``p2pd/agent-order/1``); ``principal == agent`` for a member's own order
  or a representative's aggregate.
* :class:`AgentTerms` / :class:`AgentReceipt` — trade terms naming principal
  and agent on both sides, and an optional broker (``p2pd/trade/2``). The
  receipt carries the delegations, so any verifier can check the bounds.

:func:`check_agent_receipt` is the one bounds check used by owners, takers,
the broker's parties and disputes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from protocol.credentials import ID_PATTERN, Credential
from protocol.errors import SignatureError
from protocol.messages import Message, register
from protocol.reasons import Reason
from protocol.schema import Bin, Fixed, Int, Nested, OneOf, Optional, Record, Str, f
from protocol.signing import SigningKey, digest, verify
from protocol.trading import MAX_HOPS, MAX_PRICE, MAX_SLOT, MAX_TIME, MAX_WH, MIN_SLOT, SIDES

DELEGATION_DOMAIN = "p2pd/delegation/1"
DELEGATION_REVOKE_DOMAIN = "p2pd/delegation-revoke/1"
METER_REPORT_DOMAIN = "p2pd/meter-report/1"
AGENT_ORDER_DOMAIN = "p2pd/agent-order/1"
TRADE2_DOMAIN = "p2pd/trade/2"

_MEMBER = Str(64, ID_PATTERN)
_MEMBER_OR_NONE = Str(64, f"(?:{ID_PATTERN})?")


class BoundsError(ValueError):
    """A trade is outside the delegation its agent signed under; ``reason`` says how."""

    def __init__(self, message: str, reason: Reason = Reason.OUT_OF_BOUNDS) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Delegation(Record):
    """``principal`` lets ``agent`` trade for it within these bounds."""

    delegation_id: bytes = f(Fixed(16))
    principal: str = f(_MEMBER)
    agent: str = f(_MEMBER)
    max_wh_per_slot: int = f(Int(1, MAX_WH))
    min_sell_price: int = f(Int(0, MAX_PRICE))
    max_buy_price: int = f(Int(0, MAX_PRICE))
    valid_from: int = f(Int(0, MAX_TIME))
    valid_until: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def __post_init__(self) -> None:
        if self.principal == self.agent:
            raise ValueError("a member does not delegate to itself")

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, delegation_id: bytes, principal: str, agent: str,
               max_wh_per_slot: int, min_sell_price: int, max_buy_price: int,
               valid_from: int, valid_until: int) -> Delegation:
        unsigned = cls(delegation_id, principal, agent, max_wh_per_slot, min_sell_price,
                       max_buy_price, valid_from, valid_until, bytes(64))
        d = replace(unsigned, signature=key.sign(DELEGATION_DOMAIN, unsigned.body()))
        d.validate()
        return d

    def verify(self, principal_pk: bytes) -> None:
        verify(principal_pk, self.signature, DELEGATION_DOMAIN, self.body())

    def covers(self, slot_start: int, slot_len: int) -> bool:
        return self.valid_from <= slot_start and slot_start + slot_len <= self.valid_until


@dataclass(frozen=True)
class DelegationRevoke(Record):
    delegation_id: bytes = f(Fixed(16))
    principal: str = f(_MEMBER)
    issued_at: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, delegation_id: bytes, principal: str, issued_at: int) -> DelegationRevoke:
        unsigned = cls(delegation_id, principal, issued_at, bytes(64))
        return replace(unsigned, signature=key.sign(DELEGATION_REVOKE_DOMAIN, unsigned.body()))

    def verify(self, principal_pk: bytes) -> None:
        verify(principal_pk, self.signature, DELEGATION_REVOKE_DOMAIN, self.body())


@dataclass(frozen=True)
class MeterReport(Record):
    """A client's forecast or reading for one slot, for its representative only.

    ``net_wh`` > 0 is surplus the client wants sold, < 0 energy it wants bought.
    """

    principal: str = f(_MEMBER)
    agent: str = f(_MEMBER)
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    net_wh: int = f(Int(-MAX_WH, MAX_WH))
    issued_at: int = f(Int(0, MAX_TIME))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, principal: str, agent: str, slot_start: int, slot_len: int,
               net_wh: int, issued_at: int) -> MeterReport:
        unsigned = cls(principal, agent, slot_start, slot_len, net_wh, issued_at, bytes(64))
        return replace(unsigned, signature=key.sign(METER_REPORT_DOMAIN, unsigned.body()))

    def verify(self, principal_pk: bytes) -> None:
        verify(principal_pk, self.signature, METER_REPORT_DOMAIN, self.body())


@dataclass(frozen=True)
class AgentOrder(Record):
    """An order signed by ``agent`` for ``principal`` (equal for own orders and aggregates)."""

    order_id: bytes = f(Fixed(16))
    principal: str = f(_MEMBER)
    agent: str = f(_MEMBER)
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
    def create(cls, key: SigningKey, *, order_id: bytes, principal: str, agent: str, side: str,
               slot_start: int, slot_len: int, wh: int, price: int, expiry: int) -> AgentOrder:
        unsigned = cls(order_id, principal, agent, side, slot_start, slot_len, wh, price, expiry, bytes(64))
        o = replace(unsigned, signature=key.sign(AGENT_ORDER_DOMAIN, unsigned.body()))
        o.validate()
        return o

    def verify(self, agent_pk: bytes) -> None:
        verify(agent_pk, self.signature, AGENT_ORDER_DOMAIN, self.body())


@dataclass(frozen=True)
class AgentTerms(Record):
    """What both sides' agents (and the broker, if any) sign: domain ``p2pd/trade/2``.

    ``seller_order``/``buyer_order`` are the ids of the signed orders the
    trade draws from (empty bin when that side took without an order).
    ``broker`` is empty for a direct trade.
    """

    trade_id: bytes = f(Fixed(16))
    seller: str = f(_MEMBER)
    seller_agent: str = f(_MEMBER)
    buyer: str = f(_MEMBER)
    buyer_agent: str = f(_MEMBER)
    broker: str = f(_MEMBER_OR_NONE)
    seller_order: bytes = f(Bin(0, 16))
    buyer_order: bytes = f(Bin(0, 16))
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    wh: int = f(Int(1, MAX_WH))
    price: int = f(Int(1, MAX_PRICE))
    created_at: int = f(Int(0, MAX_TIME))

    def __post_init__(self) -> None:
        if self.seller == self.buyer:
            raise ValueError("seller and buyer are the same member")
        for ref in (self.seller_order, self.buyer_order):
            if len(ref) not in (0, 16):
                raise ValueError("an order reference is 0 or 16 bytes")

    def sign(self, key: SigningKey) -> bytes:
        return key.sign(TRADE2_DOMAIN, self.to_wire())

    def verify(self, sign_pk: bytes, signature: bytes) -> None:
        verify(sign_pk, signature, TRADE2_DOMAIN, self.to_wire())

    @property
    def amount(self) -> int:
        return self.wh * self.price // 1000


@dataclass(frozen=True)
class AgentReceipt(Record):
    """Terms, the delegations they rely on, and the signatures of agents and broker.

    ``seller_sig`` is by ``seller_agent``'s key, ``buyer_sig`` by
    ``buyer_agent``'s, ``broker_sig`` by the broker's (empty without one).
    """

    terms: AgentTerms = f(Nested(AgentTerms))
    seller_delegation: Delegation | None = f(Optional(Nested(Delegation)))
    buyer_delegation: Delegation | None = f(Optional(Nested(Delegation)))
    seller_sig: bytes = f(Fixed(64))
    buyer_sig: bytes = f(Fixed(64))
    broker_sig: bytes = f(Bin(0, 64))

    @property
    def receipt_id(self) -> bytes:
        return digest(self.encode())


def check_delegation_bounds(terms: AgentTerms, side: str, delegation: Delegation | None) -> None:
    """Raise :class:`BoundsError` unless ``side``'s agent may sign ``terms``.

    Checks, in order: a delegation is present exactly when agent != principal
    (NOT_A_MEMBER); it names this principal and agent (NOT_A_MEMBER); it
    covers the slot (EXPIRED); the price is within its bound for this side
    (OUT_OF_BOUNDS); ``wh <= max_wh_per_slot`` (OUT_OF_BOUNDS). The per-slot sum
    over several receipts is checked by disputes. Signatures are not checked here.
    """
    principal, agent = (terms.seller, terms.seller_agent) if side == "sell" else (terms.buyer, terms.buyer_agent)
    if principal == agent:
        if delegation is not None:
            raise BoundsError("a delegation with a self-signed trade", Reason.NOT_A_MEMBER)
        return
    if delegation is None:
        raise BoundsError(f"{agent} signs for {principal} without a delegation", Reason.NOT_A_MEMBER)
    if (delegation.principal, delegation.agent) != (principal, agent):
        raise BoundsError("delegation names other members", Reason.NOT_A_MEMBER)
    if not delegation.covers(terms.slot_start, terms.slot_len):
        raise BoundsError("delegation does not cover the slot", Reason.EXPIRED)
    if side == "sell" and terms.price < delegation.min_sell_price:
        raise BoundsError(f"price {terms.price} below the principal's minimum {delegation.min_sell_price}")
    if side == "buy" and terms.price > delegation.max_buy_price:
        raise BoundsError(f"price {terms.price} above the principal's maximum {delegation.max_buy_price}")
    if terms.wh > delegation.max_wh_per_slot:
        raise BoundsError(f"{terms.wh} Wh exceeds {delegation.max_wh_per_slot} Wh per slot")


def check_agent_receipt(receipt: AgentReceipt, creds: dict[str, Credential]) -> None:
    """Full offline check of a receipt given members' credentials by member id.

    Raises :class:`BoundsError` (delegation bounds, roles) or
    :class:`SignatureError` (a delegation, an agent or the broker did not sign).
    Credentials themselves must already be checked against the issuer.
    """
    t = receipt.terms
    for side, delegation in (("sell", receipt.seller_delegation), ("buy", receipt.buyer_delegation)):
        check_delegation_bounds(t, side, delegation)
        if delegation is not None:
            principal = creds.get(delegation.principal)
            if principal is None:
                raise BoundsError(f"no credential for {delegation.principal}", Reason.NOT_A_MEMBER)
            delegation.verify(principal.sign_pk)
            agent = creds.get(delegation.agent)
            if agent is None or agent.role != "representative":
                raise BoundsError(f"{delegation.agent} is not a representative", Reason.BAD_ROLE)
    for who, sig in ((t.seller_agent, receipt.seller_sig), (t.buyer_agent, receipt.buyer_sig)):
        cred = creds.get(who)
        if cred is None:
            raise BoundsError(f"no credential for {who}", Reason.NOT_A_MEMBER)
        try:
            t.verify(cred.sign_pk, sig)
        except SignatureError as exc:
            raise SignatureError(f"signature of {who} does not verify") from exc
    if t.broker:
        broker = creds.get(t.broker)
        if broker is None or broker.role != "broker":
            raise BoundsError(f"{t.broker} is not a broker", Reason.BAD_ROLE)
        if not receipt.broker_sig:
            raise SignatureError("broker signature missing")
        t.verify(broker.sign_pk, receipt.broker_sig)
    elif receipt.broker_sig:
        raise SignatureError("broker signature on a direct trade")


# --- messages (types 64-71) ---------------------------------------------------


@register
@dataclass(frozen=True)
class DelegationGossip(Message):
    """A delegation with its principal's credential; spreads like an order."""

    TYPE: ClassVar[int] = 64
    CATEGORY: ClassVar[str] = "gossip"
    delegation: Delegation = f(Nested(Delegation))
    credential: Credential = f(Nested(Credential))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class DelegationRevokeGossip(Message):
    TYPE: ClassVar[int] = 65
    CATEGORY: ClassVar[str] = "gossip"
    revoke: DelegationRevoke = f(Nested(DelegationRevoke))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class MeterReportMsg(Message):
    """Client to its representative only (never forwarded)."""

    TYPE: ClassVar[int] = 66
    CATEGORY: ClassVar[str] = "trade"
    report: MeterReport = f(Nested(MeterReport))


@register
@dataclass(frozen=True)
class AgentOrderGossip(Message):
    """An agent order with the delegation it relies on and the agent's credential."""

    TYPE: ClassVar[int] = 67
    CATEGORY: ClassVar[str] = "gossip"
    order: AgentOrder = f(Nested(AgentOrder))
    delegation: Delegation | None = f(Optional(Nested(Delegation)))
    credential: Credential = f(Nested(Credential))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class AgentTake(Message):
    """The taking agent's signed terms and its own side's delegation, to the order's agent."""

    TYPE: ClassVar[int] = 68
    CATEGORY: ClassVar[str] = "trade"
    terms: AgentTerms = f(Nested(AgentTerms))
    delegation: Delegation | None = f(Optional(Nested(Delegation)))
    taker_sig: bytes = f(Fixed(64))


@register
@dataclass(frozen=True)
class AgentAccepted(Message):
    TYPE: ClassVar[int] = 69
    CATEGORY: ClassVar[str] = "trade"
    receipt: AgentReceipt = f(Nested(AgentReceipt))


@register
@dataclass(frozen=True)
class AgentRefused(Message):
    """Refusal of an AgentTake, a BrokerSubmit or a MatchPropose; ``ref`` is its id."""

    TYPE: ClassVar[int] = 70
    CATEGORY: ClassVar[str] = "trade"
    ref: bytes = f(Fixed(16))
    reason: int = f(Int(0, 255))
    message: str = f(Str(200))
