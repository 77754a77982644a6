"""Representatives (S2, S3): trading for passive clients within signed delegations.

A client (any prosumer) signs a :class:`~protocol.delegation.Delegation` for
its representative (:func:`delegate`), tells it what it wants traded only
through signed meter reports (:func:`send_report`; the representative has no
other path to the meter) and can revoke the delegation (:func:`revoke`; the
revocation spreads by gossip and every node that sees it refuses trades
under it).

:class:`Representative` trades for all its clients at once. In S2 (no broker)
it offers clients' surplus as :class:`~protocol.delegation.AgentOrder`
gossip and takes other agents' orders for clients' needs (``AgentTake``); the
order's agent countersigns and commits. Both sides refuse a trade outside
either delegation (price bound, Wh per slot, validity, revocation) — and the
receipt carries both delegations, so p2pd/market/disputes.py can prove a breach
afterwards. In S3 it submits one aggregated order per price step to the
broker (:meth:`Representative.aggregate_orders`), so the broker never sees a
household.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pd import log
from p2pd.clock import Clock
from p2pd.errors import PeerFault, PeerGone, TradeError, TradeNotStored, TradeRefused, TradeTimeout
from p2pd.market.agents import (
    Used,
    agent_receipt_parties,
    check_agent_take,
    check_terms,
    price_steps,
    wanted,
)
from p2pd.market.agents import split_fill as split_fill
from p2pd.market.delegations import Delegations
from p2pd.market.errors import Refusal
from p2pd.market.trade import Accepted, Refused, Side, Trade, TradeLedger
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import agent_receipt_record
from p2pd.roles.receipt_writer import COMMIT_REFUSALS, ReceiptWriter, commit_refusal
from p2pd.roles.refusals import refusals_of
from protocol import (
    AgentAccepted,
    AgentOrder,
    AgentOrderGossip,
    AgentReceipt,
    AgentRefused,
    AgentTake,
    AgentTerms,
    BoundsError,
    Delegation,
    DelegationGossip,
    DelegationRevoke,
    DelegationRevokeGossip,
    MeterReport,
    MeterReportMsg,
    Reason,
    SignatureError,
    check_agent_receipt,
)
from store import Committed, Duplicate, Insufficient, Outcome, StorageUnavailable

HOPS = 4


# --- the client's side ------------------------------------------------------------


async def delegate(node: Node, agent: str, *, max_wh_per_slot: int, min_sell_price: int,
                   max_buy_price: int, valid_from: int, valid_until: int,
                   random_bytes: Callable[[int], bytes] = os.urandom) -> Delegation:
    """Sign a delegation to ``agent`` and gossip it (to the agent and beyond)."""
    d = Delegation.create(node.identity.keys.signing, delegation_id=random_bytes(16),
                          principal=node.member_id, agent=agent, max_wh_per_slot=max_wh_per_slot,
                          min_sell_price=min_sell_price, max_buy_price=max_buy_price,
                          valid_from=valid_from, valid_until=valid_until)
    await node.broadcast(DelegationGossip(d, node.identity.credential, HOPS))
    return d


async def revoke(node: Node, delegation: Delegation) -> DelegationRevoke:
    r = DelegationRevoke.create(node.identity.keys.signing, delegation_id=delegation.delegation_id,
                                principal=node.member_id, issued_at=int(node.clock.now()))
    await node.broadcast(DelegationRevokeGossip(r, HOPS))
    return r


async def send_report(node: Node, agent: str, slot_start: int, slot_len: int, net_wh: int) -> MeterReport:
    """Tell our representative (only it) what to trade for a slot; raises NotConnected."""
    report = MeterReport.create(node.identity.keys.signing, principal=node.member_id, agent=agent,
                                slot_start=slot_start, slot_len=slot_len, net_wh=net_wh,
                                issued_at=int(node.clock.now()))
    await node.send_to(agent, MeterReportMsg(report))
    return report


# --- delegations any node tracks ----------------------------------------------------


class DelegationBook:
    """Delegation gossip on a node: feeds :class:`~p2pd.market.delegations.Delegations`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.rules = Delegations(node.policy, credentials={node.member_id: node.identity.credential})
        self.by_id = self.rules.by_id
        self.revoked = self.rules.revoked
        self.credentials = self.rules.credentials
        self.counters = self.rules.counters
        node.handle(DelegationGossip, self._on_delegation)
        node.handle(DelegationRevokeGossip, self._on_revoke)
        node.on_open.append(self._on_open)

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        self.credentials.setdefault(conn.peer.member_id, conn.peer)

    async def _on_delegation(self, conn: PeerConnection, msg: DelegationGossip) -> None:
        if self.rules.accept(msg.delegation, msg.credential, self.node.clock.now()) and msg.hops > 1:
            await self.node.broadcast(DelegationGossip(msg.delegation, msg.credential, msg.hops - 1), exclude=conn)

    async def _on_revoke(self, conn: PeerConnection, msg: DelegationRevokeGossip) -> None:
        if self.rules.revoke(msg.revoke) and msg.hops > 1:
            await self.node.broadcast(DelegationRevokeGossip(msg.revoke, msg.hops - 1), exclude=conn)


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    answer: AgentAccepted | AgentRefused | None = None


class Representative:
    """Trades for its clients. Also serves as any node's S2 agent-order counterpart.

    ``random_bytes(n)`` makes order and trade ids (injected, as in
    :class:`~p2pd.roles.trading.Market`, so a simulation repeats).
    """

    def __init__(self, node: Node, writer: ReceiptWriter, *, slot_len: int = 900, gate_closure: int = 300,
                 ask: int = 93_000, take_timeout: float = 5.0, take_attempts: int = 3,
                 random_bytes: Callable[[int], bytes] = os.urandom, clock: Clock | None = None) -> None:
        if node.identity.credential.role != "representative":
            raise TradeRefused("only a representative may trade for others", Reason.BAD_ROLE)
        self.node = node
        self.writer = writer
        self.slot_len = slot_len
        self.gate_closure = gate_closure
        self.ask = ask
        self.take_timeout = take_timeout
        self.take_attempts = take_attempts
        self.random_bytes = random_bytes
        self.clock = clock or node.clock  # the market clock: gates and stamps
        self.delegations = DelegationBook(node)
        self.reports: dict[tuple[str, int], MeterReport] = {}
        self.book: dict[bytes, AgentOrderGossip] = {}  # other agents' orders
        self.mine: dict[bytes, tuple[AgentOrder, Delegation | None]] = {}
        self.used: Used = Counter()  # (principal, side, slot) -> Wh
        self.receipts: dict[bytes, AgentReceipt] = {}
        self.taken: Counter[bytes] = Counter()  # order id -> Wh we took from it
        self.trades: TradeLedger[AgentReceipt] = TradeLedger(agent_receipt_parties)
        self.counters: Counter[str] = Counter()
        self._pending: dict[bytes, _Pending] = {}
        node.handle(MeterReportMsg, self._on_report)
        node.handle(AgentOrderGossip, self._on_order)
        node.handle(AgentTake, self._on_take)
        node.handle(AgentAccepted, self._on_answer)
        refusals_of(node).route(self._on_refused)

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        return int(self.clock.now())

    def delegation_of(self, principal: str) -> Delegation | None:
        """The newest unrevoked delegation ``principal`` gave us."""
        return self.delegations.rules.active(principal, self.me)

    @property
    def clients(self) -> list[str]:
        return self.delegations.rules.clients_of(self.me)

    async def _on_report(self, conn: PeerConnection, msg: MeterReportMsg) -> None:
        assert conn.peer is not None
        r = msg.report
        # Only the client itself, over its own session, can tell us about its meter.
        if r.principal != conn.peer.member_id or r.agent != self.me:
            self.counters["reports_rejected"] += 1
            return
        try:
            r.verify(conn.peer.sign_pk)
        except SignatureError:
            self.counters["reports_rejected"] += 1
            return
        self.reports[(r.principal, r.slot_start)] = r
        self.counters["reports"] += 1

    def wanted(self, slot_start: int) -> dict[str, int]:
        """Per client: net Wh still to trade in the slot (capped by its delegation), from its reports."""
        clients = self.clients
        return wanted(clients, self.reports, {c: self.delegation_of(c) for c in clients}, self.used,
                      slot_start, self.slot_len)

    # --- S3: one aggregated order per price step ------------------------------------

    def aggregate_orders(self, slot_start: int) -> list[tuple[AgentOrder, dict[str, int]]]:
        """One order per (side, limit price) for all clients, signed as our own.

        Returns each order with its allocation (client -> Wh) so fills can be
        split pro rata (:func:`~p2pd.market.agents.split_fill`).
        """
        want = self.wanted(slot_start)
        steps = price_steps(want, {c: self.delegation_of(c) for c in want})
        out = []
        for (side, price), alloc in steps.items():
            o = AgentOrder.create(self.node.identity.keys.signing, order_id=self.random_bytes(16),
                                  principal=self.me, agent=self.me, side=side, slot_start=slot_start,
                                  slot_len=self.slot_len, wh=sum(alloc.values()), price=price,
                                  expiry=slot_start - self.gate_closure)
            out.append((o, alloc))
        return out

    # --- S2: direct trading between agents ------------------------------------------

    async def offer_for_clients(self, slot_start: int) -> list[AgentOrder]:
        """Post one sell order per client with surplus; returns them."""
        posted = []
        for principal, net in self.wanted(slot_start).items():
            if net <= 0:
                continue
            d = self.delegation_of(principal)
            assert d is not None
            o = AgentOrder.create(self.node.identity.keys.signing, order_id=self.random_bytes(16),
                                  principal=principal, agent=self.me, side="sell", slot_start=slot_start,
                                  slot_len=self.slot_len, wh=net, price=max(self.ask, d.min_sell_price),
                                  expiry=slot_start - self.gate_closure)
            self.mine[o.order_id] = (o, d)
            await self.node.broadcast(AgentOrderGossip(o, d, self.node.identity.credential, HOPS))
            posted.append(o)
        return posted

    async def _on_order(self, conn: PeerConnection, msg: AgentOrderGossip) -> None:
        o = msg.order
        if o.order_id in self.book or o.order_id in self.mine:
            return
        try:
            self.node.policy.check(msg.credential, self.node.clock.now())
            if msg.credential.member_id != o.agent:
                raise Refusal(Reason.NOT_A_MEMBER, "order not signed by its agent")
            if msg.credential.role not in ("prosumer", "representative"):
                raise Refusal(Reason.BAD_ROLE, "role may not trade")
            o.verify(msg.credential.sign_pk)
            self.delegations.rules.check(msg.delegation)
        except Exception as exc:
            self.counters[f"orders_rejected:{type(exc).__name__}"] += 1
            return
        self.book[o.order_id] = msg
        self.delegations.credentials.setdefault(o.agent, msg.credential)
        if msg.hops > 1:
            await self.node.broadcast(AgentOrderGossip(o, msg.delegation, msg.credential, msg.hops - 1), exclude=conn)

    async def buy_for_clients(self, slot_start: int) -> list[AgentReceipt]:
        """Take the cheapest acceptable orders for every client that needs energy."""
        got = []
        for principal, net in self.wanted(slot_start).items():
            need = -net
            d = self.delegation_of(principal)
            assert d is not None
            offers = sorted((g for g in self.book.values()
                             if g.order.side == "sell" and g.order.slot_start == slot_start
                             and g.order.price <= d.max_buy_price and g.order.principal != principal),
                            key=lambda g: (g.order.price, g.order.order_id))
            for g in offers:
                # What we took ourselves is known; other takers show up as INSUFFICIENT.
                avail = g.order.wh - self.taken[g.order.order_id]
                if need <= 0:
                    break
                if avail <= 0:
                    continue
                try:
                    r = await self.take(g, principal, min(need, avail))
                except TradeError as exc:
                    self.counters[f"takes_failed:{exc.reason.name}"] += 1
                    continue
                need -= r.terms.wh
                got.append(r)
        return got

    def check_terms(self, t: AgentTerms, seller_d: Delegation | None, buyer_d: Delegation | None) -> None:
        """Both sides' delegation bounds, revocations and per-slot caps. Raises TradeRefused."""
        try:
            check_terms(t, seller_d, buyer_d, self.delegations.rules, self.me, self.used)
        except Refusal as exc:
            raise TradeRefused.from_refusal(exc, trade_id=t.trade_id) from exc

    async def take(self, g: AgentOrderGossip, principal: str, wh: int, *, price: int | None = None) -> AgentReceipt:
        """Take ``wh`` of another agent's sell order for ``principal``.

        Sends the same signed terms up to ``take_attempts`` times (a lost
        answer never makes a second trade). Raises :class:`TradeRefused`,
        :class:`PeerFault`, :class:`TradeTimeout` or :class:`TradeNotStored`
        (the other agent committed, our store cannot), with the trade id.
        """
        o = g.order
        d = self.delegation_of(principal)
        terms = AgentTerms(self.random_bytes(16), o.principal, o.agent, principal, self.me, "", o.order_id, b"",
                           o.slot_start, o.slot_len, wh, price or o.price, self.now())
        tid = terms.trade_id
        self.check_terms(terms, g.delegation, d)
        trade = self.trades.open(tid, Side.TAKER, frozenset((o.agent, self.me)), self.now())
        msg = AgentTake(terms, d, terms.sign(self.node.identity.keys.signing))
        pending = self._pending[tid] = _Pending()
        try:
            for _attempt in range(self.take_attempts):
                try:
                    await self.node.send_to(o.agent, msg)
                except PeerGone:
                    continue
                with trio.move_on_after(self.take_timeout):
                    await pending.done.wait()
                if pending.answer is not None:
                    break
                self.counters["take_retries"] += 1
        finally:
            self._pending.pop(tid, None)
        if isinstance(pending.answer, AgentRefused):
            refused = trade.refuse(Refused(Reason(pending.answer.reason), pending.answer.message))
            raise TradeRefused(f"refused: {refused.message}", refused.reason, trade_id=tid)
        if pending.answer is None:
            raise TradeTimeout("no answer from the order's agent", trade_id=tid)
        receipt = pending.answer.receipt
        if receipt.terms != terms or receipt.buyer_sig != msg.taker_sig:
            raise PeerFault("answer with other terms", Reason.PROTOCOL_ERROR, trade_id=tid)
        try:
            check_agent_receipt(receipt, self.delegations.credentials)
        except (BoundsError, SignatureError) as exc:
            raise PeerFault(f"receipt does not verify: {exc}", Reason.BAD_SIGNATURE, trade_id=tid) from exc
        trade.countersigned(receipt)
        try:
            outcome = await self.writer.commit(agent_receipt_record(receipt, self.now()))
        except StorageUnavailable as exc:
            self.trades.forget(tid)  # not recorded here: a retry starts afresh
            raise TradeNotStored(f"the other agent committed the trade but our store cannot record it: "
                                 f"{exc}", trade_id=tid) from exc
        decision = self._committed(trade, outcome)
        if isinstance(decision, Refused):  # pragma: no cover - the order's agent enforced it
            raise TradeRefused(decision.message, decision.reason, trade_id=tid)
        self.used[(principal, "buy", o.slot_start)] += wh
        self.taken[o.order_id] += wh
        self.receipts[tid] = decision.receipt
        self.counters["trades_taken"] += 1
        return decision.receipt

    def _committed(self, trade: Trade[AgentReceipt], outcome: Outcome) -> Accepted[AgentReceipt] | Refused:
        if isinstance(outcome, Insufficient):
            return trade.refuse(Refusal(Reason.INSUFFICIENT, f"only {outcome.remaining_wh} Wh remain",
                                        outcome.remaining_wh))
        if isinstance(outcome, Duplicate):
            return trade.committed(AgentReceipt.decode(outcome.receipt.encoded), fresh=False).answer
        assert isinstance(outcome, Committed) and trade.receipt is not None
        return trade.committed(trade.receipt, fresh=True).answer

    async def _on_answer(self, conn: PeerConnection, msg: AgentAccepted) -> None:
        pending = self._pending.get(msg.receipt.terms.trade_id)
        if pending is not None and not pending.done.is_set():
            pending.answer = msg
            pending.done.set()

    async def _on_refused(self, conn: PeerConnection, msg: AgentRefused) -> bool:
        pending = self._pending.get(msg.ref)
        if pending is None or pending.done.is_set():
            return False
        pending.answer = msg
        pending.done.set()
        return True

    async def _on_take(self, conn: PeerConnection, msg: AgentTake) -> None:
        answer = await self._settle(conn, msg)
        if isinstance(answer, Refused):
            self.counters[f"takes_refused:{answer.reason.name}"] += 1
            log.info("agent_take_refused", trade=msg.terms.trade_id.hex(), reason=answer.reason.name,
                     why=answer.message)
            await conn.send(AgentRefused(msg.terms.trade_id, int(answer.reason), answer.message[:200]))
            return
        await conn.send(AgentAccepted(answer.receipt))

    async def _settle(self, conn: PeerConnection, msg: AgentTake) -> Accepted[AgentReceipt] | Refused:
        """The order's agent's answer to a take (p2pd/market/trade.py): checked, committed, refused."""
        assert conn.peer is not None
        t = msg.terms
        asker = conn.peer.member_id
        known = self.trades.get(t.trade_id)
        if known is not None:
            # Rule 1: a known trade id gets that trade's answer -- and only its
            # parties learn the receipt.
            return known.answer_for(asker) or Refused(Reason.REPLAY, "a take with this trade id is in progress")
        mine = self.mine.get(t.seller_order)
        try:
            if mine is None:
                raise Refusal(Reason.NOT_FOUND, "no order of ours")
            o, own_d = mine
            check_agent_take(o, t, conn.peer, msg.taker_sig, self.me, self.now())
            check_terms(t, own_d, msg.delegation, self.delegations.rules, self.me, self.used)
        except Refusal as exc:
            return Refused(exc.reason, exc.message, exc.remaining_wh)
        self.delegations.credentials.setdefault(asker, conn.peer)
        trade = self.trades.open(t.trade_id, Side.OWNER, frozenset((self.me, t.buyer_agent)), self.now())
        receipt = AgentReceipt(t, own_d, msg.delegation, t.sign(self.node.identity.keys.signing),
                               msg.taker_sig, b"")
        trade.countersigned(receipt)
        rec = dataclasses.replace(agent_receipt_record(receipt, self.now()), order_id=o.order_id, order_wh=o.wh)
        try:
            outcome = await self.writer.commit(rec)
        except COMMIT_REFUSALS as exc:
            self.trades.forget(t.trade_id)  # our disk refused it: so do we; a retry starts afresh
            return trade.refuse(commit_refusal(exc))
        except BaseException:
            self.trades.forget(t.trade_id)  # not decided: a retry starts afresh
            raise
        fresh = isinstance(outcome, Committed)
        answer = self._committed(trade, outcome)
        if isinstance(answer, Accepted) and fresh:
            self.used[(t.seller, "sell", t.slot_start)] += t.wh
            self.receipts[t.trade_id] = receipt
            self.counters["trades_sold"] += 1
        return answer
