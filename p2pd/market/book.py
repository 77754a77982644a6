"""The S1 order book: which orders are live, and the rules an order must meet.

Orders arrive by gossip from any member (docs/protocol.md section 12); the
book checks each (credential, signature, role, slot rules, expiry) before
holding it, keeps cancelled and sold-out orders apart until they expire (so a
taker can still retry a take whose answer was lost and get its receipt), and
drops what has expired. ``now`` is always an argument.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
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


class LiveOrders(dict[bytes, BookEntry]):
    """Live orders by id, indexed by (slot, side) and by expiry as they change.

    A dict, so callers (and tests) read and write it as before; every write
    goes through ``__setitem__``/``__delitem__``/``pop`` and keeps the index.
    Why: an agent asks for one slot's offers several times a slot, and the
    agent and the pruner of every node did that by scanning the whole book,
    which at community scale holds every member's orders (N^2 work per tick
    round in a simulation).
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_slot: dict[tuple[int, str], dict[bytes, BookEntry]] = {}
        self._expiries: list[tuple[int, bytes]] = []  # heap; stale entries are skipped

    def __setitem__(self, order_id: bytes, entry: BookEntry) -> None:
        old = self.get(order_id)
        if old is not None:
            self._unindex(order_id, old)
        super().__setitem__(order_id, entry)
        o = entry.order
        self._by_slot.setdefault((o.slot_start, o.side), {})[order_id] = entry
        heapq.heappush(self._expiries, (o.expiry, order_id))

    def __delitem__(self, order_id: bytes) -> None:
        self._unindex(order_id, self[order_id])
        super().__delitem__(order_id)

    def pop(self, order_id: bytes, *default: Any) -> Any:
        entry = self.get(order_id)
        if entry is None:
            return super().pop(order_id, *default)
        del self[order_id]
        return entry

    def popitem(self) -> tuple[bytes, BookEntry]:
        order_id = next(reversed(self))
        return order_id, self.pop(order_id)

    def clear(self) -> None:
        super().clear()
        self._by_slot.clear()
        self._expiries.clear()

    def setdefault(self, order_id: bytes, default: BookEntry) -> BookEntry:
        if order_id not in self:
            self[order_id] = default
        return self[order_id]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for order_id, entry in dict(*args, **kwargs).items():
            self[order_id] = entry

    def _unindex(self, order_id: bytes, entry: BookEntry) -> None:
        key = (entry.order.slot_start, entry.order.side)
        bucket = self._by_slot.get(key)
        if bucket is not None:
            bucket.pop(order_id, None)
            if not bucket:
                del self._by_slot[key]

    def for_slot(self, slot_start: int, side: str) -> Iterable[BookEntry]:
        """The live orders of ``side`` for the slot starting at ``slot_start``."""
        return list(self._by_slot.get((slot_start, side), {}).values())

    def expired(self, now: int) -> list[bytes]:
        """Ids of held orders whose expiry is at or before ``now`` (not removed)."""
        out = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expiry, order_id = heapq.heappop(heap)
            entry = self.get(order_id)
            if entry is not None and entry.order.expiry == expiry:
                out.append(order_id)
        return out


@dataclass
class OrderBook:
    """Live orders by id, plus cancelled and withdrawn ones until they expire."""

    policy: TrustPolicy
    rules: MarketRules
    live: LiveOrders = field(default_factory=LiveOrders)
    cancelled: dict[bytes, int] = field(default_factory=dict)  # order id -> expiry: drop late gossip
    withdrawn: dict[bytes, BookEntry] = field(default_factory=dict)  # cancelled or sold out
    credentials: dict[str, Credential] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    epoch_keys: EpochKeyRing | None = None  # None: pseudonymous orders are refused
    _cancel_expiries: list[tuple[int, bytes]] = field(default_factory=list, repr=False)

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
        heapq.heappush(self._cancel_expiries, (expiry, cancel.order_id))
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
        dead = self.live.expired(now)
        for oid in dead:
            del self.live[oid]
        heap = self._cancel_expiries
        while heap and heap[0][0] <= now:
            exp, oid = heapq.heappop(heap)
            if self.cancelled.get(oid) == exp:
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
