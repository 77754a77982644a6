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
from typing import Any

import trio

from p2pd import storage
from p2pd.clock import Clock
from p2pd.errors import (
    PeerGone,
    TradeError,
    TradeRefused,
)
from p2pd.events import OrderCancelled, OrderSeen, TradeCommitted
from p2pd.market.book import BookEntry as BookEntry
from p2pd.market.book import OrderBook
from p2pd.market.book import describe_order as describe_order
from p2pd.market.book import describe_terms as describe_terms
from p2pd.market.disputes import export_bundle
from p2pd.market.errors import Refusal
from p2pd.market.rules import MarketRules as MarketRules
from p2pd.market.take import (
    check_take,
    countersign,
    receipt_parties,
)
from p2pd.market.trade import (
    Accepted,
    Refused,
    Side,
    TradeLedger,
    answer_from_store,
)
from p2pd.net.gossip import GossipRouter
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.anon import Pseudonymous
from p2pd.roles.receipt_writer import COMMIT_REFUSALS, ReceiptWriter, commit_refusal
from p2pd.roles.receipts import commit_outcome as commit_outcome
from p2pd.roles.receipts import order_record as order_record
from p2pd.roles.receipts import receipt_parties_of_terms as receipt_parties_of_terms
from p2pd.roles.receipts import receipt_record as receipt_record
from p2pd.roles.taking import Taking
from protocol import (
    MAX_HOPS,
    SNAPSHOT_MAX,
    Cancel,
    CancelGossip,
    Credential,
    GossipBatch,
    Order,
    OrderGossip,
    OrdersRequest,
    OrdersSnapshot,
    Pseudonym,
    Reason,
    Receipt,
    Take,
    TradeAccepted,
)
from protocol import (
    TradeRefused as TradeRefusedMsg,
)
from store import (
    MemberRecord,
    Repository,
    StorageUnavailable,
    StoreError,
)

MAX_TAKES_IN_FLIGHT = 64
# Snapshots accepted per OrdersRequest we sent: 32 x 128 = 4096 live orders.
MAX_SNAPSHOTS_PER_REQUEST = 32
TRADE_DIAL_GRACE = 60.0  # s a trade dial's mark waits for its session to open


class Market(Pseudonymous, Taking):
    """One node's view of the community market, and its trading actions.

    The rules live in p2pd.market (the book, the take checks, the trade
    state machine); this class carries them out: gossip, sessions, the store.
    ``clock`` is the market clock (wall time; scaled in simulations).
    ``random_bytes(n)`` makes order and trade ids (a seeded RNG's in
    simulations, so that a run repeats; ``os.urandom`` otherwise).
    """

    def __init__(self, node: Node, repo: Repository, writer: ReceiptWriter, *,
                 rules: MarketRules | None = None, clock: Clock | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 withdraw_sold_out: bool = True) -> None:
        self.node = node
        self.repo = repo
        self.writer = writer
        self.rules = rules or MarketRules()
        self.clock = clock or node.clock
        self.random_bytes = random_bytes
        # An honest node withdraws a sold-out order (a Cancel) so nobody tries
        # to take it; False keeps it listed, as the simulator's double_sell
        # attacker does.
        self.withdraw_sold_out = withdraw_sold_out
        self.orderbook = OrderBook(node.policy, self.rules, counters=node.counters)
        # The live book, cancel markers and known credentials (views of orderbook).
        self.book = self.orderbook.live
        self.cancelled = self.orderbook.cancelled
        self.withdrawn = self.orderbook.withdrawn
        self.credentials = self.orderbook.credentials
        self.trades: TradeLedger[Receipt] = TradeLedger(receipt_parties)
        self._init_taking()
        self._settling: dict[bytes, trio.Event] = {}  # owner side: trades being committed
        self._take_limiters: dict[PeerConnection, trio.CapacityLimiter] = {}
        self._snapshots_allowed: dict[PeerConnection, int] = {}
        self._trade_dials: dict[str, float] = {}  # member -> node-clock time the mark lapses
        self._members_unstored: set[str] = set()  # credentials the store refused (disk full)
        self.counters = node.counters
        self.gossip = GossipRouter(node, degree=self.rules.gossip_degree, interval=self.rules.gossip_interval)
        self._init_anon()  # pseudonymous orders (p2pd/roles/anon.py)
        node.handle(OrderGossip, self._on_order_gossip)
        node.handle(CancelGossip, self._on_cancel_gossip)
        node.handle(OrdersRequest, self._on_orders_request)
        node.handle(OrdersSnapshot, self._on_orders_snapshot)
        node.handle(GossipBatch, self._on_gossip_batch)
        node.handle(Take, self._on_take)
        node.handle(TradeAccepted, self._on_answer)
        node.handle(TradeRefusedMsg, self._on_answer)
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
            self.orderbook.add_own(order, self.node.identity.credential, remaining)
        for pending in await storage.call(self.repo, self.repo.pending_takes):
            self._pending_takes[pending.trade_id] = pending

    # --- validation -------------------------------------------------------------

    def check_order(self, order: Order, cred: Credential, now: int) -> None:
        """Raise :class:`TradeRefused` unless ``order`` is acceptable now."""
        from p2pd.market.book import check_order

        try:
            check_order(order, cred, self.node.policy, self.rules, now)
        except Refusal as exc:
            raise TradeRefused.from_refusal(exc) from exc

    # --- gossip ---------------------------------------------------------------------

    def _accept_order(self, gossip: OrderGossip, now: int, conn: PeerConnection) -> bool:
        """Validate and add to the book; False if already known or refused."""
        entry = self.orderbook.accept(gossip.order, gossip.credential, now)
        if entry is None:
            return False
        if isinstance(gossip.credential, Pseudonym):
            self.note_origin(gossip.order.order_id, conn)
        else:
            self._remember(gossip.credential)
        self.node.events.publish(OrderSeen(**describe_order(gossip.order)))
        return True

    def gossip_sessions(self) -> list[PeerConnection]:
        return self.gossip.gossip_sessions()

    def push_gossip(self, gossip: OrderGossip) -> None:
        self.gossip.push(gossip)

    def _forward(self, msg: OrderGossip | CancelGossip, exclude: PeerConnection | None) -> None:
        if msg.hops > 0:
            self.gossip.push(msg, exclude)

    async def _on_order_gossip(self, conn: PeerConnection, msg: OrderGossip) -> None:
        self.gossip.heard(conn, msg)
        if self._accept_order(msg, self.now(), conn):
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
        if not self.orderbook.apply_cancel(cancel):
            return False
        self.node.events.publish(OrderCancelled(cancel.order_id.hex(), cancel.member_id))
        return True

    def _remember(self, cred: Credential) -> None:
        """Keep a member's credential (in memory, and in the store for disputes)."""
        known = self.credentials.get(cred.member_id)
        if known == cred and cred.member_id not in self._members_unstored:
            return
        self.credentials[cred.member_id] = cred
        record = MemberRecord(cred.member_id, cred.role, cred.metering_point, cred.sign_pk,
                              cred.noise_pk, cred.encode(), cred.valid_until)
        self.node.nursery.start_soon(self._store_member, record)

    async def _store_member(self, record: MemberRecord) -> None:
        # A full disk must not end the node; the member is stored again the
        # next time we meet its credential (disputes need it in the store).
        try:
            await storage.call(self.repo, self.repo.put_member, record)
        except StorageUnavailable:
            self._members_unstored.add(record.member_id)
        else:
            self._members_unstored.discard(record.member_id)

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
        await self.announce_epoch_keys(conn)
        if any(p.owner == conn.peer.member_id for p in self._pending_takes.values()):
            self.node.spawn_for(conn, self.retry_pending, conn.peer.member_id)
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
            self._accept_order(gossip, now, conn)

    def prune(self) -> int:
        """Drop expired orders, cancel markers and old finished trades; returns orders dropped."""
        now = self.now()
        self.trades.prune(now)
        dropped = self.orderbook.prune(now)
        self.forget_orders(lambda oid: oid in self.book or oid in self.withdrawn)
        return dropped

    # --- local actions --------------------------------------------------------------

    async def post(self, side: str, slot_start: int, wh: int, price: int,
                   expiry: int | None = None, order_id: bytes | None = None) -> Order:
        """Sign, store and gossip a new order of ours. Raises TradeRefused."""
        now = self.now()
        if expiry is None:
            expiry = slot_start - self.rules.gate_closure
        # With a wallet, the order is signed by a fresh pseudonym and names
        # nobody (docs/protocol.md 12.8); without one it names this member.
        signing, member = self.node.identity.keys.signing, self.me
        cert: Credential | Pseudonym = self.node.identity.credential
        if self.wallet is not None:
            owned = await self.draw_pseudonym(now)
            if owned is None:
                raise TradeRefused("no pseudonym available for a new order", Reason.OUT_OF_BOUNDS)
            signing, member, cert = owned.keys.signing, owned.pseudonym.member_id, owned.pseudonym
            order_id = owned.pseudonym.order_id
        try:
            order = Order.create(
                signing, order_id=order_id or self.random_bytes(16), member_id=member,
                side=side, slot_start=slot_start, slot_len=self.rules.slot_len, wh=wh,
                price=price, expiry=expiry,
            )
        except Exception as exc:  # LocalProtocolError / ValueError: bad fields
            raise TradeRefused(f"invalid order: {exc}", Reason.OUT_OF_BOUNDS) from exc
        if isinstance(cert, Pseudonym):
            from p2pd.market.book import check_order_terms

            try:
                check_order_terms(order, self.rules, now)
            except Refusal as exc:
                raise TradeRefused.from_refusal(exc) from exc
        else:
            self.check_order(order, cert, now)
        await self._write_local(self.repo.put_order, order_record(order))
        self.orderbook.add_own(order, cert, wh)
        self.counters["orders_posted"] += 1
        self.node.events.publish(OrderSeen(**describe_order(order)))
        if isinstance(cert, Pseudonym):
            await self.push_stem(OrderGossip(order, cert, self.rules.hops))
        else:
            self.gossip.push(OrderGossip(order, cert, self.rules.hops))
        return order

    async def cancel(self, order_id: bytes) -> None:
        entry = self.book.get(order_id)
        if entry is None or not self.is_own(entry):
            raise TradeRefused("no live order of ours with that id", Reason.NOT_FOUND)
        owned = self.owned(order_id)
        key = owned.keys.signing if owned is not None else self.node.identity.keys.signing
        cancel = Cancel.create(key, order_id=order_id, member_id=entry.order.member_id,
                               issued_at=self.now())
        await self._write_local(self.repo.cancel_order, order_id)
        self._apply_cancel(cancel)
        self.gossip.push(CancelGossip(cancel, self.rules.hops))

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
            answer = await self._settle_take(conn, msg)
            if isinstance(answer, Refused):
                self.counters[f"takes_refused:{answer.reason.name}"] += 1
                await conn.send(TradeRefusedMsg(msg.terms.trade_id, int(answer.reason),
                                                answer.remaining_wh, answer.message[:200]))
            else:
                await conn.send(TradeAccepted(answer.receipt))
        except PeerGone:
            pass  # the taker retries with the same trade id and gets the receipt
        finally:
            limiter.release_on_behalf_of(token)

    async def _settle_take(self, conn: PeerConnection, msg: Take) -> Accepted[Receipt] | Refused:
        """The owner's answer to a take (p2pd/market/trade.py): checked, committed, or refused."""
        terms = msg.terms
        assert conn.peer is not None
        taker = conn.peer.member_id
        # Rule 1 of Take (docs/protocol.md 12.3): a known trade id gets that
        # trade's answer, never a new trade -- from the ledger while the trade
        # is recent (a retry that overtook the first attempt waits for it),
        # else from the store (after a lost answer, a sell-out, expiry or restart).
        while True:
            known = self.trades.get(terms.trade_id)
            if known is not None:
                if not known.finished:
                    await self._settling[terms.trade_id].wait()
                answer = known.answer_for(taker)
                assert answer is not None
                return answer
            rec = await storage.call(self.repo, self.repo.get_receipt, terms.trade_id)
            if rec is not None:
                return answer_from_store(Receipt.decode(rec.encoded), taker, receipt_parties,
                                         missing=Refusal(Reason.NOT_FOUND, "no such trade"))
            if self.trades.get(terms.trade_id) is None:
                break  # still unknown after the lookup: this take is the first
        entry = self.book.get(terms.order_id)
        order = entry.order if entry else None
        try:
            if entry is None or order is None or not self.is_own(entry):
                raise Refusal(Reason.NOT_FOUND, "no live order of ours with that id")
            check_take(order, terms, taker, conn.peer.sign_pk, msg.taker_sig, self.now(), owner=self.me)
        except Refusal as refusal:
            return Refused(refusal.reason, refusal.message, refusal.remaining_wh)
        assert entry is not None and order is not None
        self._remember(conn.peer)  # stores the taker's credential again if a full disk refused it
        trade = self.trades.open(terms.trade_id, Side.OWNER, receipt_parties_of_terms(terms), self.now())
        settled = self._settling[terms.trade_id] = trio.Event()
        try:
            receipt = countersign(terms, self.node.identity.keys.signing, self.me, msg.taker_sig)
            trade.countersigned(receipt)
            decision = commit_outcome(trade, await self.writer.commit(receipt_record(receipt, self.now())))
        except COMMIT_REFUSALS as exc:
            # Our store cannot commit (disk full): refuse this take and keep
            # the session; a retry with the trade id starts afresh.
            self.trades.forget(terms.trade_id)
            return trade.refuse(commit_refusal(exc))
        except BaseException:
            # The commit failed (the store raised): the trade is not decided;
            # forget it so a retry starts afresh (the store refuses a double).
            self.trades.forget(terms.trade_id)
            raise
        finally:
            del self._settling[terms.trade_id]
            settled.set()
        answer = decision.answer
        if isinstance(answer, Refused):
            if answer.reason is Reason.INSUFFICIENT:
                entry.remaining_wh = answer.remaining_wh
            return answer
        if not decision.fresh:
            self.counters["takes_duplicate"] += 1
            return answer
        entry.remaining_wh = (entry.remaining_wh if entry.remaining_wh is not None else order.wh) - terms.wh
        self.counters["trades_sold" if terms.seller == self.me else "trades_bought"] += 1
        self.node.events.publish(TradeCommitted(**describe_terms(terms), role="owner"))
        if entry.remaining_wh <= 0 and self.withdraw_sold_out:
            self.node.nursery.start_soon(self._retire, order.order_id)
        return answer

    async def _retire(self, order_id: bytes) -> None:
        """A fully traded order is withdrawn so others stop trying to take it."""
        try:
            await self.cancel(order_id)
        except (TradeError, StoreError):
            pass

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
        return self.orderbook.view(self.now(), slot_start)
