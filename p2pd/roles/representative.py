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
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import trio

from p2pd import log
from p2pd.errors import PeerGone, TradeError
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import add_handler, agent_receipt_record
from p2pd.roles.receipt_writer import ReceiptWriter
from protocol import (
    AgentAccepted,
    AgentOrder,
    AgentOrderGossip,
    AgentReceipt,
    AgentTake,
    AgentTerms,
    BoundsError,
    Credential,
    Delegation,
    DelegationGossip,
    DelegationRevoke,
    DelegationRevokeGossip,
    MeterReport,
    MeterReportMsg,
    Reason,
    Refused2,
    SignatureError,
    check_agent_receipt,
    check_delegation_bounds,
)
from store import Committed, Duplicate, Insufficient

HOPS = 4


# --- the client's side ------------------------------------------------------------


async def delegate(node: Node, agent: str, *, max_wh_per_slot: int, min_sell_price: int,
                   max_buy_price: int, valid_from: int, valid_until: int) -> Delegation:
    """Sign a delegation to ``agent`` and gossip it (to the agent and beyond)."""
    d = Delegation.create(node.identity.keys.signing, delegation_id=os.urandom(16),
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
    """Delegations and revocations seen by gossip; attach to every node that checks trades."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.by_id: dict[bytes, Delegation] = {}
        self.revoked: set[bytes] = set()
        self.credentials: dict[str, Credential] = {node.member_id: node.identity.credential}
        self.counters: Counter[str] = Counter()
        node.handle(DelegationGossip, self._on_delegation)
        node.handle(DelegationRevokeGossip, self._on_revoke)
        node.on_open.append(self._on_open)

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        self.credentials.setdefault(conn.peer.member_id, conn.peer)

    def accept(self, d: Delegation, cred: Credential) -> bool:
        if d.delegation_id in self.by_id or d.delegation_id in self.revoked:
            return False
        try:
            self.node.policy.check(cred, self.node.clock.now())
            if cred.member_id != d.principal:
                raise TradeError("delegation not signed by its principal", Reason.NOT_A_MEMBER)
            d.verify(cred.sign_pk)
        except Exception as exc:
            self.counters[f"delegations_rejected:{type(exc).__name__}"] += 1
            return False
        self.by_id[d.delegation_id] = d
        self.credentials.setdefault(cred.member_id, cred)
        self.counters["delegations_accepted"] += 1
        return True

    async def _on_delegation(self, conn: PeerConnection, msg: DelegationGossip) -> None:
        if self.accept(msg.delegation, msg.credential) and msg.hops > 1:
            await self.node.broadcast(DelegationGossip(msg.delegation, msg.credential, msg.hops - 1), exclude=conn)

    async def _on_revoke(self, conn: PeerConnection, msg: DelegationRevokeGossip) -> None:
        r = msg.revoke
        if r.delegation_id in self.revoked:
            return
        cred = self.credentials.get(r.principal)
        d = self.by_id.get(r.delegation_id)
        if cred is None or (d is not None and d.principal != r.principal):
            return
        try:
            r.verify(cred.sign_pk)
        except SignatureError:
            return
        self.revoked.add(r.delegation_id)
        self.counters["revocations"] += 1
        if msg.hops > 1:
            await self.node.broadcast(DelegationRevokeGossip(r, msg.hops - 1), exclude=conn)

    def check(self, d: Delegation | None) -> None:
        """Raise TradeError if ``d`` was revoked or its principal is unknown."""
        if d is None:
            return
        if d.delegation_id in self.revoked:
            raise TradeError("delegation revoked", Reason.REVOKED)
        cred = self.credentials.get(d.principal)
        if cred is None:
            raise TradeError(f"principal {d.principal} unknown", Reason.NOT_A_MEMBER)
        try:
            d.verify(cred.sign_pk)
        except SignatureError as exc:
            raise TradeError("delegation signature does not verify", Reason.BAD_SIGNATURE) from exc


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    answer: AgentAccepted | Refused2 | None = None


class Representative:
    """Trades for its clients. Also serves as any node's S2 agent-order counterpart."""

    def __init__(self, node: Node, writer: ReceiptWriter, *, slot_len: int = 900, gate_closure: int = 300,
                 ask: int = 93_000, take_timeout: float = 5.0) -> None:
        if node.identity.credential.role != "representative":
            raise TradeError("only a representative may trade for others", Reason.BAD_ROLE)
        self.node = node
        self.writer = writer
        self.slot_len = slot_len
        self.gate_closure = gate_closure
        self.ask = ask
        self.take_timeout = take_timeout
        self.delegations = DelegationBook(node)
        self.reports: dict[tuple[str, int], MeterReport] = {}
        self.book: dict[bytes, AgentOrderGossip] = {}  # other agents' orders
        self.mine: dict[bytes, tuple[AgentOrder, Delegation | None]] = {}
        self.used: Counter[tuple[str, str, int]] = Counter()  # (principal, side, slot) -> Wh
        self.receipts: dict[bytes, AgentReceipt] = {}
        self.taken: Counter[bytes] = Counter()  # order id -> Wh we took from it
        self.counters: Counter[str] = Counter()
        self._pending: dict[bytes, _Pending] = {}
        node.handle(MeterReportMsg, self._on_report)
        node.handle(AgentOrderGossip, self._on_order)
        node.handle(AgentTake, self._on_take)
        node.handle(AgentAccepted, self._on_answer)
        add_handler(node, Refused2, self._on_answer)

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        return int(self.node.clock.now())

    def delegation_of(self, principal: str) -> Delegation | None:
        """The newest unrevoked delegation ``principal`` gave us."""
        best = None
        for d in self.delegations.by_id.values():
            if d.principal == principal and d.agent == self.me and d.delegation_id not in self.delegations.revoked:
                if best is None or d.valid_from > best.valid_from:
                    best = d
        return best

    @property
    def clients(self) -> list[str]:
        return sorted({d.principal for d in self.delegations.by_id.values()
                       if d.agent == self.me and d.delegation_id not in self.delegations.revoked})

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
        out = {}
        for principal in self.clients:
            r = self.reports.get((principal, slot_start))
            d = self.delegation_of(principal)
            if r is None or d is None or not d.covers(slot_start, self.slot_len) or r.net_wh == 0:
                continue
            side = "sell" if r.net_wh > 0 else "buy"
            # What is left of the report after what was already traded for it,
            # within the delegation's cap (so a second pass never buys twice).
            left = min(abs(r.net_wh), d.max_wh_per_slot) - self.used[(principal, side, slot_start)]
            out[principal] = max(0, left) * (1 if side == "sell" else -1)
        return {k: v for k, v in out.items() if v}

    # --- S3: one aggregated order per price step ------------------------------------

    def aggregate_orders(self, slot_start: int) -> list[tuple[AgentOrder, dict[str, int]]]:
        """One order per (side, limit price) for all clients, signed as our own.

        Returns each order with its allocation (client -> Wh) so fills can be
        split pro rata. Sell steps use each client's ``min_sell_price`` (at
        least our ask); buy steps its ``max_buy_price``.
        """
        steps: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        for principal, net in self.wanted(slot_start).items():
            d = self.delegation_of(principal)
            assert d is not None
            if net > 0:
                steps[("sell", max(d.min_sell_price, 1))][principal] = net
            else:
                steps[("buy", max(d.max_buy_price, 1))][principal] = -net
        out = []
        for (side, price), alloc in sorted(steps.items()):
            o = AgentOrder.create(self.node.identity.keys.signing, order_id=os.urandom(16), principal=self.me,
                                  agent=self.me, side=side, slot_start=slot_start, slot_len=self.slot_len,
                                  wh=sum(alloc.values()), price=price, expiry=slot_start - self.gate_closure)
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
            o = AgentOrder.create(self.node.identity.keys.signing, order_id=os.urandom(16), principal=principal,
                                  agent=self.me, side="sell", slot_start=slot_start, slot_len=self.slot_len,
                                  wh=net, price=max(self.ask, d.min_sell_price),
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
                raise TradeError("order not signed by its agent", Reason.NOT_A_MEMBER)
            if msg.credential.role not in ("prosumer", "representative"):
                raise TradeError("role may not trade", Reason.BAD_ROLE)
            o.verify(msg.credential.sign_pk)
            self.delegations.check(msg.delegation)
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

    async def take(self, g: AgentOrderGossip, principal: str, wh: int, *, price: int | None = None) -> AgentReceipt:
        """Take ``wh`` of another agent's sell order for ``principal``. Raises TradeError."""
        o = g.order
        d = self.delegation_of(principal)
        terms = AgentTerms(os.urandom(16), o.principal, o.agent, principal, self.me, "", o.order_id, b"",
                           o.slot_start, o.slot_len, wh, price or o.price, self.now())
        self._check_terms(terms, g.delegation, d)
        msg = AgentTake(terms, d, terms.sign(self.node.identity.keys.signing))
        pending = self._pending[terms.trade_id] = _Pending()
        try:
            await self.node.send_to(o.agent, msg)
            with trio.move_on_after(self.take_timeout):
                await pending.done.wait()
        except PeerGone as exc:
            raise TradeError("order's agent gone", Reason.TIMEOUT) from exc
        finally:
            self._pending.pop(terms.trade_id, None)
        if isinstance(pending.answer, Refused2):
            raise TradeError(f"refused: {pending.answer.message}", Reason(pending.answer.reason))
        if pending.answer is None:
            raise TradeError("no answer", Reason.TIMEOUT)
        receipt = pending.answer.receipt
        if receipt.terms != terms or receipt.buyer_sig != msg.taker_sig:
            raise TradeError("answer with other terms", Reason.PROTOCOL_ERROR)
        try:
            check_agent_receipt(receipt, self.delegations.credentials)
        except (BoundsError, SignatureError) as exc:
            raise TradeError(f"receipt does not verify: {exc}", Reason.BAD_SIGNATURE) from exc
        await self.writer.commit(agent_receipt_record(receipt, self.now()))
        self.used[(principal, "buy", o.slot_start)] += wh
        self.taken[o.order_id] += wh
        self.receipts[terms.trade_id] = receipt
        self.counters["trades_taken"] += 1
        return receipt

    def _check_terms(self, t: AgentTerms, seller_d: Delegation | None, buyer_d: Delegation | None) -> None:
        """Both sides' delegation bounds, revocations and per-slot caps. Raises TradeError."""
        for side, d in (("sell", seller_d), ("buy", buyer_d)):
            try:
                check_delegation_bounds(t, side, d)
            except BoundsError as exc:
                raise TradeError(str(exc), exc.reason) from exc
            self.delegations.check(d)
            if d is not None and d.agent == self.me:
                principal = t.seller if side == "sell" else t.buyer
                if self.used[(principal, side, t.slot_start)] + t.wh > d.max_wh_per_slot:
                    raise TradeError("delegation's Wh per slot used up", Reason.OUT_OF_BOUNDS)

    async def _on_answer(self, conn: PeerConnection, msg: AgentAccepted | Refused2) -> None:
        tid = msg.receipt.terms.trade_id if isinstance(msg, AgentAccepted) else msg.ref
        pending = self._pending.get(tid)
        if pending is not None and not pending.done.is_set():
            pending.answer = msg
            pending.done.set()

    async def _on_take(self, conn: PeerConnection, msg: AgentTake) -> None:
        try:
            receipt = await self._settle(conn, msg)
        except TradeError as exc:
            reason = exc.reason if isinstance(exc.reason, Reason) else Reason.PROTOCOL_ERROR
            self.counters[f"takes_refused:{reason.name}"] += 1
            log.info("agent_take_refused", trade=msg.terms.trade_id.hex(), reason=reason.name, why=str(exc))
            await conn.send(Refused2(msg.terms.trade_id, int(reason), str(exc)[:200]))
            return
        await conn.send(AgentAccepted(receipt))

    async def _settle(self, conn: PeerConnection, msg: AgentTake) -> AgentReceipt:
        assert conn.peer is not None
        t = msg.terms
        mine = self.mine.get(t.seller_order)
        if mine is None:
            raise TradeError("no order of ours", Reason.NOT_FOUND)
        o, own_d = mine
        if (t.seller, t.seller_agent, t.slot_start, t.slot_len, t.price, t.broker) != (
                o.principal, self.me, o.slot_start, o.slot_len, o.price, ""):
            raise TradeError("terms do not match the order", Reason.OUT_OF_BOUNDS)
        if t.buyer_agent != conn.peer.member_id:
            raise TradeError("the taker must be the buyer's agent", Reason.NOT_A_MEMBER)
        if t.buyer != t.buyer_agent and conn.peer.role != "representative":
            raise TradeError("only a representative may buy for others", Reason.BAD_ROLE)
        if self.now() >= o.expiry:
            raise TradeError("order expired", Reason.EXPIRED)
        self._check_terms(t, own_d, msg.delegation)
        try:
            t.verify(conn.peer.sign_pk, msg.taker_sig)
        except SignatureError as exc:
            raise TradeError("taker signature does not verify", Reason.BAD_SIGNATURE) from exc
        self.delegations.credentials.setdefault(conn.peer.member_id, conn.peer)
        receipt = AgentReceipt(t, own_d, msg.delegation, t.sign(self.node.identity.keys.signing),
                               msg.taker_sig, b"")
        rec = agent_receipt_record(receipt, self.now())
        rec = dataclasses.replace(rec, order_id=o.order_id, order_wh=o.wh)
        outcome = await self.writer.commit(rec)
        if isinstance(outcome, Insufficient):
            raise TradeError(f"only {outcome.remaining_wh} Wh remain", Reason.INSUFFICIENT)
        if isinstance(outcome, Duplicate):
            return AgentReceipt.decode(outcome.receipt.encoded)
        assert isinstance(outcome, Committed)
        self.used[(t.seller, "sell", t.slot_start)] += t.wh
        self.receipts[t.trade_id] = receipt
        self.counters["trades_sold"] += 1
        return receipt


def split_fill(alloc: dict[str, int], filled: int) -> dict[str, int]:
    """Split ``filled`` Wh of an aggregated order among clients, pro rata, in whole Wh.

    Floors each share, then gives the leftover Wh one each to the largest
    remainders (ties: member id), so the shares sum exactly to ``filled``
    and no client gets more than it asked for.
    """
    total = sum(alloc.values())
    if filled > total or filled < 0:
        raise ValueError("fill outside the order")
    shares = {m: wh * filled // total for m, wh in alloc.items()} if total else {}
    left = filled - sum(shares.values())
    for m in sorted(alloc, key=lambda m: (-(alloc[m] * filled % total), m))[:left]:
        shares[m] += 1
    return shares
