"""Scenario S1 trading: the order book, gossip, takes and receipts.

Flow of a trade (docs/protocol.md, "Trading"):

1. An owner signs an :class:`Order`; it spreads by gossip (``OrderGossip``,
   de-duplicated by id, hop-limited) with the owner's credential, so every
   node can check it without knowing the owner beforehand.
2. A taker signs :class:`TradeTerms` and sends ``Take`` to the owner over a
   direct session.
3. The owner checks the terms against its order, countersigns, commits the
   receipt through the group-commit writer — the store refuses anything that
   would sell more than the order holds — and only then answers with
   ``TradeAccepted``. A retried take (same trade id) gets the same receipt.
4. The taker checks both signatures and commits the receipt too.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import log, storage
from p2pd.clock import Clock
from p2pd.errors import NotConnected, PeerGone, TradeError
from p2pd.market.disputes import export_bundle
from p2pd.net.gossip import GossipRouter
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.receipt_writer import ReceiptWriter
from protocol import (
    MAX_HOPS,
    SNAPSHOT_MAX,
    Cancel,
    CancelGossip,
    Credential,
    CredentialError,
    GossipBatch,
    Order,
    OrderGossip,
    OrdersRequest,
    OrdersSnapshot,
    Reason,
    Receipt,
    SignatureError,
    Take,
    TradeAccepted,
    TradeRefused,
    TradeTerms,
    parties,
)
from store import (
    Committed,
    Duplicate,
    Insufficient,
    MemberRecord,
    OrderRecord,
    ReceiptRecord,
    Repository,
)

TRADING_ROLES = ("prosumer", "representative")
MAX_TAKES_IN_FLIGHT = 64
# Snapshots accepted per OrdersRequest we sent: 32 x 128 = 4096 live orders.
MAX_SNAPSHOTS_PER_REQUEST = 32
TRADE_DIAL_GRACE = 60.0  # s a trade dial's mark waits for its session to open


@dataclass(frozen=True)
class MarketRules:
    """Community trading rules (from the [community] and [trading] config)."""

    slot_len: int = 900
    gate_closure: int = 300
    max_ahead: int = 2 * 86400
    hops: int = 8
    take_timeout: float = 10.0
    take_attempts: int = 3
    gossip_degree: int = 8
    """Fan-out limit for orders and cancels (p2pd/net/gossip.py)."""
    gossip_interval: float = 0.5
    """Seconds gossip waits in a session's queue to be sent as one GossipBatch."""


@dataclass
class BookEntry:
    order: Order
    credential: Credential
    remaining_wh: int | None = None  # known exactly only for our own orders


@dataclass
class _PendingTake:
    terms: TradeTerms
    done: trio.Event = field(default_factory=trio.Event)
    answer: TradeAccepted | TradeRefused | None = None


def receipt_record(receipt: Receipt, created_at: int) -> ReceiptRecord:
    t = receipt.terms
    return ReceiptRecord(
        trade_id=t.trade_id, order_id=t.order_id, seller=t.seller, buyer=t.buyer,
        slot_start=t.slot_start, slot_len=t.slot_len, wh=t.wh, price=t.price,
        order_wh=t.order_wh, encoded=receipt.encode(), created_at=created_at,
    )


def order_record(order: Order, cancelled: bool = False) -> OrderRecord:
    return OrderRecord(
        order_id=order.order_id, member_id=order.member_id, side=order.side,
        slot_start=order.slot_start, slot_len=order.slot_len, wh=order.wh,
        price=order.price, expiry=order.expiry, encoded=order.encode(), cancelled=cancelled,
    )


class Market:
    """One node's view of the community market, and its trading actions.

    ``clock`` is the market clock (wall time; scaled in simulations).
    ``random_bytes(n)`` makes order and trade ids (a seeded RNG's in
    simulations, so that a run repeats; ``os.urandom`` otherwise).
    """

    def __init__(self, node: Node, repo: Repository, writer: ReceiptWriter, *,
                 rules: MarketRules | None = None, clock: Clock | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.node = node
        self.repo = repo
        self.writer = writer
        self.rules = rules or MarketRules()
        self.clock = clock or node.clock
        self.random_bytes = random_bytes
        self.book: dict[bytes, BookEntry] = {}
        self.cancelled: dict[bytes, int] = {}  # order id -> expiry, to drop late gossip
        self.withdrawn: dict[bytes, BookEntry] = {}  # cancelled or sold-out orders, until expiry
        self.credentials: dict[str, Credential] = {}
        self._pending: dict[bytes, _PendingTake] = {}
        self._take_limiters: dict[PeerConnection, trio.CapacityLimiter] = {}
        self._snapshots_allowed: dict[PeerConnection, int] = {}
        self._trade_dials: dict[str, float] = {}  # member -> node-clock time the mark lapses
        self.counters = node.counters
        self.gossip = GossipRouter(node, degree=self.rules.gossip_degree, interval=self.rules.gossip_interval)
        node.handle(OrderGossip, self._on_order_gossip)
        node.handle(CancelGossip, self._on_cancel_gossip)
        node.handle(OrdersRequest, self._on_orders_request)
        node.handle(OrdersSnapshot, self._on_orders_snapshot)
        node.handle(GossipBatch, self._on_gossip_batch)
        node.handle(Take, self._on_take)
        node.handle(TradeAccepted, self._on_answer)
        node.handle(TradeRefused, self._on_answer)
        node.on_open.append(self._on_session_open)
        node.on_close.append(self._on_session_close)

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        return int(self.clock.now())

    # --- restoring state ------------------------------------------------------

    async def load(self) -> None:
        """Reload our own live orders (and what remains of them) after a restart."""
        self._remember(self.node.identity.credential)
        now = self.now()
        records = await storage.call(self.repo, self.repo.live_orders, now)
        for rec in records:
            if rec.member_id != self.me:
                continue
            order = Order.decode(rec.encoded)
            remaining = await storage.call(self.repo, self.repo.remaining_wh, rec.order_id, rec.wh)
            self.book[order.order_id] = BookEntry(order, self.node.identity.credential, remaining)

    # --- validation -------------------------------------------------------------

    def check_order(self, order: Order, cred: Credential, now: int) -> None:
        """Raise TradeError unless ``order`` is acceptable now."""
        try:
            self.node.policy.check(cred, now)
        except CredentialError as exc:
            raise TradeError(f"order owner: {exc}", exc.reason) from exc
        if cred.member_id != order.member_id:
            raise TradeError("order is not signed by its owner's credential", Reason.NOT_A_MEMBER)
        if cred.role not in TRADING_ROLES:
            raise TradeError(f"a {cred.role} may not post orders", Reason.BAD_ROLE)
        try:
            order.verify(cred.sign_pk)
        except SignatureError as exc:
            raise TradeError("order signature does not verify", Reason.BAD_SIGNATURE) from exc
        self.check_order_terms(order, now)

    def check_order_terms(self, order: Order, now: int) -> None:
        r = self.rules
        if order.slot_len != r.slot_len:
            raise TradeError(f"slot length must be {r.slot_len} s", Reason.OUT_OF_BOUNDS)
        if order.expiry <= now:
            raise TradeError("order has expired", Reason.EXPIRED)
        if order.expiry > order.slot_start - r.gate_closure:
            raise TradeError("order expires after gate closure", Reason.OUT_OF_BOUNDS)
        if order.slot_start > now + r.max_ahead:
            raise TradeError("delivery slot too far ahead", Reason.OUT_OF_BOUNDS)

    # --- gossip ---------------------------------------------------------------------

    def _accept_order(self, gossip: OrderGossip, now: int) -> bool:
        """Validate and add to the book; False if already known or refused."""
        order = gossip.order
        if order.order_id in self.book or order.order_id in self.cancelled:
            self.counters["orders_duplicate"] += 1
            return False
        try:
            self.check_order(order, gossip.credential, now)
        except TradeError as exc:
            self.counters[f"orders_rejected:{exc.reason.name}"] += 1  # type: ignore[attr-defined]
            log.debug("order_rejected", order=order.order_id.hex(), reason=str(exc))
            return False
        self.book[order.order_id] = BookEntry(order, gossip.credential)
        self._remember(gossip.credential)
        self.counters["orders_accepted"] += 1
        self.node.events.publish("order", **describe_order(order))
        return True

    def _forward(self, msg: OrderGossip | CancelGossip, exclude: PeerConnection | None) -> None:
        if msg.hops > 0:
            self.gossip.push(msg, exclude)

    async def _on_order_gossip(self, conn: PeerConnection, msg: OrderGossip) -> None:
        self.gossip.heard(conn, msg)
        if self._accept_order(msg, self.now()):
            self._forward(OrderGossip(msg.order, msg.credential, min(msg.hops, MAX_HOPS) - 1 if msg.hops else 0), conn)

    async def _on_cancel_gossip(self, conn: PeerConnection, msg: CancelGossip) -> None:
        self.gossip.heard(conn, msg)
        if self._apply_cancel(msg.cancel):
            self._forward(CancelGossip(msg.cancel, msg.hops - 1 if msg.hops else 0), conn)

    async def _on_gossip_batch(self, conn: PeerConnection, msg: GossipBatch) -> None:
        # Each item exactly as if it had come alone; orders first, then cancels.
        for order in msg.orders:
            await self._on_order_gossip(conn, order)
        for cancel in msg.cancels:
            await self._on_cancel_gossip(conn, cancel)

    def _apply_cancel(self, cancel: Cancel) -> bool:
        if cancel.order_id in self.cancelled:
            return False
        entry = self.book.get(cancel.order_id)
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
        withdrawn = self.book.pop(cancel.order_id, None)
        if withdrawn is not None:
            # Kept until expiry so a taker can still retry a take whose
            # answer was lost (same trade id) and get its receipt.
            self.withdrawn[cancel.order_id] = withdrawn
        self.counters["cancels_accepted"] += 1
        self.node.events.publish("cancel", order_id=cancel.order_id.hex(), member=cancel.member_id)
        return True

    def _remember(self, cred: Credential) -> None:
        """Keep a member's credential (in memory, and in the store for disputes)."""
        known = self.credentials.get(cred.member_id)
        if known == cred:
            return
        self.credentials[cred.member_id] = cred
        record = MemberRecord(cred.member_id, cred.role, cred.metering_point, cred.sign_pk,
                              cred.noise_pk, cred.encode(), cred.valid_until)
        self.node.nursery.start_soon(storage.call, self.repo, self.repo.put_member, record)

    async def dial_for_trade(self, member_id: str, dial: Callable[[str], Awaitable[Any]]) -> Any:
        """Run ``dial(member_id)`` for a trade: the session it opens carries no gossip.

        Returns what ``dial`` returns; its exceptions propagate. The session
        opens with GossipControl(NONE) (docs/protocol.md §12.3) instead of an
        OrdersRequest, so sessions opened on demand to take an order do not
        join the gossip flood.
        """
        self._trade_dials[member_id] = self.node.clock.now() + TRADE_DIAL_GRACE
        try:
            return await dial(member_id)
        except BaseException:
            self._trade_dials.pop(member_id, None)
            raise

    def _is_trade_dial(self, conn: PeerConnection) -> bool:
        lapses = self._trade_dials.pop(conn.member_id, None)
        return conn.initiator and lapses is not None and lapses > self.node.clock.now()

    async def _on_session_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        self._remember(conn.peer)
        if await self.gossip.open_session(conn, trade_only=self._is_trade_dial(conn)):
            self._snapshots_allowed[conn] = MAX_SNAPSHOTS_PER_REQUEST
            await conn.send(OrdersRequest())

    async def _on_session_close(self, conn: PeerConnection) -> None:
        self._take_limiters.pop(conn, None)
        self._snapshots_allowed.pop(conn, None)
        await self.gossip.forget(conn)

    async def _on_orders_request(self, conn: PeerConnection, msg: OrdersRequest) -> None:
        if not self.gossip.carries_gossip(conn):
            self.counters["orders_requests_ignored"] += 1  # a trade-only session
            return
        now = self.now()
        live = [OrderGossip(e.order, e.credential, 1) for e in self.book.values() if e.order.expiry > now]
        for i in range(0, len(live), SNAPSHOT_MAX):
            await conn.send(OrdersSnapshot(tuple(live[i : i + SNAPSHOT_MAX])))

    async def _on_orders_snapshot(self, conn: PeerConnection, msg: OrdersSnapshot) -> None:
        # Snapshots answer our OrdersRequest: each costs one message for rate
        # limits, so a peer may send only as many as a catch-up needs.
        left = self._snapshots_allowed.get(conn, 0)
        if left <= 0:
            self.counters["snapshots_unsolicited"] += 1
            return
        self._snapshots_allowed[conn] = left - 1
        now = self.now()
        for gossip in msg.orders:
            self._accept_order(gossip, now)

    def prune(self) -> int:
        """Drop expired orders and cancel markers; returns how many were dropped."""
        now = self.now()
        dead = [oid for oid, e in self.book.items() if e.order.expiry <= now]
        for oid in dead:
            del self.book[oid]
        for oid in [oid for oid, exp in self.cancelled.items() if exp <= now]:
            del self.cancelled[oid]
            self.withdrawn.pop(oid, None)
        return len(dead)

    # --- local actions --------------------------------------------------------------

    async def post(self, side: str, slot_start: int, wh: int, price: int,
                   expiry: int | None = None, order_id: bytes | None = None) -> Order:
        """Sign, store and gossip a new order of ours. Raises TradeError."""
        now = self.now()
        if expiry is None:
            expiry = slot_start - self.rules.gate_closure
        try:
            order = Order.create(
                self.node.identity.keys.signing, order_id=order_id or self.random_bytes(16), member_id=self.me,
                side=side, slot_start=slot_start, slot_len=self.rules.slot_len, wh=wh,
                price=price, expiry=expiry,
            )
        except Exception as exc:  # LocalProtocolError / ValueError: bad fields
            raise TradeError(f"invalid order: {exc}", Reason.OUT_OF_BOUNDS) from exc
        self.check_order(order, self.node.identity.credential, now)
        await storage.call(self.repo, self.repo.put_order, order_record(order))
        self.book[order.order_id] = BookEntry(order, self.node.identity.credential, wh)
        self.counters["orders_posted"] += 1
        self.node.events.publish("order", **describe_order(order))
        self.gossip.push(OrderGossip(order, self.node.identity.credential, self.rules.hops))
        return order

    async def cancel(self, order_id: bytes) -> None:
        entry = self.book.get(order_id)
        if entry is None or entry.order.member_id != self.me:
            raise TradeError("no live order of ours with that id", Reason.NOT_FOUND)
        cancel = Cancel.create(self.node.identity.keys.signing, order_id=order_id,
                               member_id=self.me, issued_at=self.now())
        await storage.call(self.repo, self.repo.cancel_order, order_id)
        self._apply_cancel(cancel)
        self.gossip.push(CancelGossip(cancel, self.rules.hops))

    async def take(self, order_id: bytes, wh: int, *, trade_id: bytes | None = None) -> Receipt:
        """Take ``wh`` of someone's order; returns the committed receipt.

        Retries with the same trade id on timeout, so a lost answer never
        makes a second trade. Raises TradeError (refused, or no answer).
        """
        if trade_id is not None:
            # A retry: if we already hold the receipt, that is the answer.
            rec = await storage.call(self.repo, self.repo.get_receipt, trade_id)
            if rec is not None:
                return Receipt.decode(rec.encoded)
        entry = self.book.get(order_id)
        if entry is None and trade_id is not None:
            entry = self.withdrawn.get(order_id)  # the owner answers with the stored receipt
        if entry is None:
            raise TradeError("unknown or expired order", Reason.NOT_FOUND)
        order = entry.order
        if order.member_id == self.me:
            raise TradeError("cannot take our own order", Reason.BAD_ROLE)
        seller, buyer = parties(order, self.me)
        try:
            terms = TradeTerms(trade_id or self.random_bytes(16), order.order_id, order.wh, seller, buyer,
                               order.slot_start, order.slot_len, wh, order.price, self.now())
            terms.validate()
        except Exception as exc:
            raise TradeError(f"invalid take: {exc}", Reason.OUT_OF_BOUNDS) from exc
        take = Take(terms, terms.sign(self.node.identity.keys.signing))
        pending = self._pending.setdefault(terms.trade_id, _PendingTake(terms))
        try:
            for attempt in range(self.rules.take_attempts):
                conn = self.node.sessions.get(order.member_id)
                if conn is None:
                    raise NotConnected(f"no session with {order.member_id}")
                try:
                    await conn.send(take)
                except PeerGone:
                    continue
                with trio.move_on_after(self.rules.take_timeout):
                    await pending.done.wait()
                if pending.answer is not None:
                    break
                self.counters["take_retries"] += 1
        finally:
            self._pending.pop(terms.trade_id, None)
        answer = pending.answer
        if isinstance(answer, TradeRefused):
            self.counters[f"takes_refused:{answer.reason_code.name}"] += 1
            raise TradeError(f"take refused: {answer.message}", answer.reason_code, answer.remaining_wh)
        if answer is None:
            raise TradeError("no answer from the order's owner", Reason.TIMEOUT)
        receipt = answer.receipt
        if receipt.terms != terms:
            raise TradeError("owner answered with other terms", Reason.PROTOCOL_ERROR)
        # Our own signature must be the one we sent (a byte comparison); only
        # the owner's needs a verify: two signs and two verifies per trade.
        owner_is_seller = seller == order.member_id
        ours, theirs = ((receipt.buyer_sig, receipt.seller_sig) if owner_is_seller
                        else (receipt.seller_sig, receipt.buyer_sig))
        try:
            if ours != take.taker_sig:
                raise SignatureError("receipt does not carry our signature")
            terms.verify(entry.credential.sign_pk, theirs)
        except SignatureError as exc:
            raise TradeError(f"receipt does not verify: {exc}", Reason.BAD_SIGNATURE) from exc
        outcome = await self.writer.commit(receipt_record(receipt, self.now()))
        if isinstance(outcome, Insufficient):  # pragma: no cover - owner already enforced it
            log.error("receipt_over_order", trade=terms.trade_id.hex())
        self.counters["trades_taken"] += 1
        self.node.events.publish("trade", **describe_terms(terms), role="taker")
        return receipt

    async def _on_answer(self, conn: PeerConnection, msg: TradeAccepted | TradeRefused) -> None:
        trade_id = msg.receipt.terms.trade_id if isinstance(msg, TradeAccepted) else msg.trade_id
        pending = self._pending.get(trade_id)
        if pending is None or pending.done.is_set():
            self.counters["answers_unexpected"] += 1
            return
        pending.answer = msg
        pending.done.set()

    # --- owner side -----------------------------------------------------------------

    async def _on_take(self, conn: PeerConnection, msg: Take) -> None:
        # Serve takes concurrently (up to MAX_TAKES_IN_FLIGHT per session) so
        # that a burst lands in one group commit; past that, the session's
        # receive loop waits, which pushes back on the taker.
        limiter = self._take_limiters.get(conn)
        if limiter is None:
            limiter = self._take_limiters[conn] = trio.CapacityLimiter(MAX_TAKES_IN_FLIGHT)
        token = object()
        await limiter.acquire_on_behalf_of(token)
        self.node.spawn_for(conn, self._serve_take, conn, msg, limiter, token)

    async def _serve_take(self, conn: PeerConnection, msg: Take, limiter: trio.CapacityLimiter,
                          token: object) -> None:
        try:
            await self._answer_take(conn, msg)
        except PeerGone:
            pass  # the taker retries with the same trade id and gets the receipt
        finally:
            limiter.release_on_behalf_of(token)

    async def _answer_take(self, conn: PeerConnection, msg: Take) -> None:
        terms = msg.terms
        try:
            receipt = await self._settle_take(conn, msg)
        except TradeError as exc:
            reason = exc.reason if isinstance(exc.reason, Reason) else Reason.PROTOCOL_ERROR
            self.counters[f"takes_refused:{reason.name}"] += 1
            await conn.send(TradeRefused(terms.trade_id, int(reason), exc.remaining_wh or 0, str(exc)[:200]))
            return
        await conn.send(TradeAccepted(receipt))

    async def _settle_take(self, conn: PeerConnection, msg: Take) -> Receipt:
        terms = msg.terms
        assert conn.peer is not None
        taker = conn.peer.member_id
        entry = self.book.get(terms.order_id)
        order = entry.order if entry else None
        if order is None or order.member_id != self.me:
            existing = await self._existing_receipt(terms.trade_id, taker)
            if existing is not None:
                return existing
            raise TradeError("no live order of ours with that id", Reason.NOT_FOUND)
        seller, buyer = parties(order, taker)
        expected = (order.order_id, order.wh, seller, buyer, order.slot_start, order.slot_len, order.price)
        got = (terms.order_id, terms.order_wh, terms.seller, terms.buyer, terms.slot_start,
               terms.slot_len, terms.price)
        if got != expected:
            raise TradeError("terms do not match the order", Reason.OUT_OF_BOUNDS)
        try:
            terms.verify(conn.peer.sign_pk, msg.taker_sig)
        except SignatureError as exc:
            raise TradeError("taker signature does not verify", Reason.BAD_SIGNATURE) from exc
        now = self.now()
        if order.expiry <= now:
            existing = await self._existing_receipt(terms.trade_id, taker)
            if existing is not None:
                return existing
            raise TradeError("order has expired", Reason.EXPIRED)
        own_sig = terms.sign(self.node.identity.keys.signing)
        receipt = (Receipt(terms, own_sig, msg.taker_sig) if seller == self.me
                   else Receipt(terms, msg.taker_sig, own_sig))
        outcome = await self.writer.commit(receipt_record(receipt, now))
        if isinstance(outcome, Insufficient):
            entry.remaining_wh = outcome.remaining_wh  # type: ignore[union-attr]
            raise TradeError(f"only {outcome.remaining_wh} Wh remain", Reason.INSUFFICIENT,
                             outcome.remaining_wh)
        if isinstance(outcome, Duplicate):
            stored = Receipt.decode(outcome.receipt.encoded)
            if taker not in (stored.terms.seller, stored.terms.buyer):
                raise TradeError("trade id already used", Reason.REPLAY)
            self.counters["takes_duplicate"] += 1
            return stored
        assert isinstance(outcome, Committed)
        assert entry is not None
        entry.remaining_wh = (entry.remaining_wh if entry.remaining_wh is not None else order.wh) - terms.wh
        self.counters["trades_sold" if seller == self.me else "trades_bought"] += 1
        self.node.events.publish("trade", **describe_terms(terms), role="owner")
        if entry.remaining_wh <= 0:
            self.node.nursery.start_soon(self._retire, order.order_id)
        return receipt

    async def _retire(self, order_id: bytes) -> None:
        """A fully traded order is withdrawn so others stop trying to take it."""
        try:
            await self.cancel(order_id)
        except TradeError:
            pass

    async def _existing_receipt(self, trade_id: bytes, taker: str) -> Receipt | None:
        rec = await storage.call(self.repo, self.repo.get_receipt, trade_id)
        if rec is None:
            return None
        receipt = Receipt.decode(rec.encoded)
        if taker not in (receipt.terms.seller, receipt.terms.buyer):
            raise TradeError("trade id already used", Reason.REPLAY)
        return receipt

    def export(self, member_id: str | None = None, since: int | None = None) -> dict[str, Any]:
        """A self-contained receipts bundle (see p2pd.market.disputes) from our store."""
        records = self.repo.receipts(member_id, since)
        names = {self.me} | {r.seller for r in records} | {r.buyer for r in records}
        creds = [self.node.identity.credential]
        for name in sorted(names):
            member = self.repo.get_member(name)
            if member is not None:
                creds.append(Credential.decode(member.credential))
        return export_bundle(self.node.policy.community, [r.encoded for r in records], creds)

    # --- views ------------------------------------------------------------------------

    def orders(self, slot_start: int | None = None) -> list[dict[str, Any]]:
        now = self.now()
        out = []
        for e in sorted(self.book.values(), key=lambda e: (e.order.slot_start, e.order.price)):
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
