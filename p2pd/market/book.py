"""The S1 order book: which orders are live, and the rules an order must meet.

Orders arrive by gossip from any member (docs/protocol.md section 12); the
book checks each (credential, signature, role, slot rules, expiry) before
holding it, keeps cancelled and sold-out orders apart until they expire (so a
taker can still retry a take whose answer was lost and get its receipt), and
drops what has expired. ``now`` is always an argument.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from p2pd.market.errors import Refusal
from p2pd.market.pseudonyms import EpochKeyRing, check_anon_order
from p2pd.market.rules import TRADING_ROLES, MarketRules
from protocol import (
    Cancel,
    Credential,
    CredentialError,
    Order,
    Pseudonym,
    Reason,
    SignatureError,
    TradeTerms,
    TrustPolicy,
)


@dataclass
class BookEntry:
    order: Order
    credential: Credential | Pseudonym  # a Pseudonym for a pseudonymous order (protocol.md 12.8)
    remaining_wh: int | None = None  # known exactly only for our own orders


def check_order_terms(order: Order, rules: MarketRules, now: int) -> None:
    """Raise :class:`Refusal` unless ``order``'s slot and expiry fit ``rules`` at ``now``."""
    if order.slot_len != rules.slot_len:
        raise Refusal(Reason.OUT_OF_BOUNDS, f"slot length must be {rules.slot_len} s")
    if order.expiry <= now:
        raise Refusal(Reason.EXPIRED, "order has expired")
    if order.expiry > order.slot_start - rules.gate_closure:
        raise Refusal(Reason.OUT_OF_BOUNDS, "order expires after gate closure")
    if order.slot_start > now + rules.max_ahead:
        hours = rules.max_ahead // 3600
        raise Refusal(Reason.OUT_OF_BOUNDS, f"delivery slot too far ahead: at most {hours} h")


def check_order(order: Order, cred: Credential, policy: TrustPolicy, rules: MarketRules, now: int) -> None:
    """Raise :class:`Refusal` unless ``order``, signed under ``cred``, is acceptable at ``now``."""
    try:
        policy.check(cred, now)
    except CredentialError as exc:
        raise Refusal(exc.reason, f"order owner: {exc}") from exc
    if cred.member_id != order.member_id:
        raise Refusal(Reason.NOT_A_MEMBER, "order is not signed by its owner's credential")
    if cred.role not in TRADING_ROLES:
        raise Refusal(Reason.BAD_ROLE, f"a {cred.role} may not post orders")
    try:
        order.verify(cred.sign_pk)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "order signature does not verify") from exc
    check_order_terms(order, rules, now)


@dataclass
class OrderBook:
    """Live orders by id, plus cancelled and withdrawn ones until they expire."""

    policy: TrustPolicy
    rules: MarketRules
    live: dict[bytes, BookEntry] = field(default_factory=dict)
    cancelled: dict[bytes, int] = field(default_factory=dict)  # order id -> expiry: drop late gossip
    withdrawn: dict[bytes, BookEntry] = field(default_factory=dict)  # cancelled or sold out
    credentials: dict[str, Credential] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    epoch_keys: EpochKeyRing | None = None  # None: pseudonymous orders are refused

    def knows(self, order_id: bytes) -> bool:
        return order_id in self.live or order_id in self.cancelled

    def accept(self, order: Order, cred: Credential | Pseudonym, now: int) -> BookEntry | None:
        """Validate ``order`` and hold it; None if already known or refused (counted)."""
        if self.knows(order.order_id):
            self.counters["orders_duplicate"] += 1
            return None
        try:
            if isinstance(cred, Pseudonym):
                check_anon_order(order, cred, self.epoch_keys, self.rules, now)
                check_order_terms(order, self.rules, now)
            else:
                check_order(order, cred, self.policy, self.rules, now)
        except Refusal as exc:
            self.counters[f"orders_rejected:{exc.reason.name}"] += 1
            return None
        entry = self.live[order.order_id] = BookEntry(order, cred)
        if isinstance(cred, Credential):
            self.credentials.setdefault(cred.member_id, cred)
        self.counters["orders_accepted"] += 1
        return entry

    def add_own(self, order: Order, cred: Credential | Pseudonym, remaining_wh: int) -> BookEntry:
        entry = self.live[order.order_id] = BookEntry(order, cred, remaining_wh)
        return entry

    def apply_cancel(self, cancel: Cancel) -> bool:
        """Withdraw the order ``cancel`` names if its owner signed it; True if it did now."""
        if cancel.order_id in self.cancelled:
            return False
        entry = self.live.get(cancel.order_id)
        cred = entry.credential if entry else self.credentials.get(cancel.member_id)
        if cred is None or cred.member_id != cancel.member_id:
            self.counters["cancels_unknown"] += 1
            return False
        if entry is not None and entry.order.member_id != cancel.member_id:
            self.counters["cancels_rejected:NOT_A_MEMBER"] += 1
            return False
        try:
            cancel.verify(cred.sign_pk)
        except SignatureError:
            self.counters["cancels_rejected:BAD_SIGNATURE"] += 1
            return False
        expiry = entry.order.expiry if entry else cancel.issued_at + self.rules.max_ahead
        self.cancelled[cancel.order_id] = expiry
        withdrawn = self.live.pop(cancel.order_id, None)
        if withdrawn is not None:
            # Kept until expiry so a taker can still retry a take whose
            # answer was lost (same trade id) and get its receipt.
            self.withdrawn[cancel.order_id] = withdrawn
        self.counters["cancels_accepted"] += 1
        return True

    def entry_for_take(self, order_id: bytes, *, retry: bool) -> BookEntry | None:
        """The order a take names: live, or (for a retry of a known trade) withdrawn."""
        entry = self.live.get(order_id)
        if entry is None and retry:
            entry = self.withdrawn.get(order_id)
        return entry

    def prune(self, now: int) -> int:
        """Drop expired orders and cancel markers; returns how many orders were dropped."""
        dead = [oid for oid, e in self.live.items() if e.order.expiry <= now]
        for oid in dead:
            del self.live[oid]
        for oid in [oid for oid, exp in self.cancelled.items() if exp <= now]:
            del self.cancelled[oid]
            self.withdrawn.pop(oid, None)
        return len(dead)

    def view(self, now: int, slot_start: int | None = None) -> list[dict[str, Any]]:
        """Live orders, by slot then price, as control-API dicts."""
        out = []
        for e in sorted(self.live.values(), key=lambda e: (e.order.slot_start, e.order.price)):
            if e.order.expiry <= now or (slot_start is not None and e.order.slot_start != slot_start):
                continue
            out.append({**describe_order(e.order), "remaining_wh": e.remaining_wh})
        return out


def describe_order(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id.hex(), "member": order.member_id, "side": order.side,
        "slot_start": order.slot_start, "slot_len": order.slot_len, "wh": order.wh,
        "price": order.price, "expiry": order.expiry,
    }


def describe_terms(terms: TradeTerms) -> dict[str, Any]:
    return {
        "trade_id": terms.trade_id.hex(), "order_id": terms.order_id.hex(), "seller": terms.seller,
        "buyer": terms.buyer, "slot_start": terms.slot_start, "wh": terms.wh, "price": terms.price,
        "amount": terms.amount,
    }
