"""The broker (S3, S4): a periodic double auction, and the parties' side of it.

:class:`Broker` runs on a node whose credential role is ``broker``. Agents
submit signed orders (``BrokerSubmit``) until gate closure; :meth:`Broker.close_slot`
clears the slot (p2pd/market/clearing.py), proposes each match to both agents, and
finalises a match only when both have countersigned. It then publishes the
book and a signed summary, so anyone can re-run the clearing.

:class:`BrokerClient` is the parties' side (prosumers and representatives).
It countersigns a proposal only if it draws on an order this node signed and
still holds, at a price within that order's limit and for no more than what
remains — so a broker cannot add a trade nobody ordered, move a price, or
overfill. A dropped trade shows up in :func:`audit_slot` against the
published book. If the broker disappears between countersigning and the
final receipt, the two agents finish the trade between themselves
(:meth:`BrokerClient.finish_directly`): the proposal already carries the
broker's signature.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import log
from p2pd.errors import PeerGone, TradeError
from p2pd.market.clearing import BookOrder, ClearingResult, book_hash, clear
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    BOOK_CHUNK_MAX,
    AgentOrder,
    AgentReceipt,
    AgentTerms,
    BookChunk,
    BoundsError,
    BrokerAccepted,
    BrokerSubmit,
    ClearingAnnounce,
    ClearingSummary,
    Credential,
    Delegation,
    MatchFinal,
    MatchPropose,
    MatchSign,
    Reason,
    Refused2,
    SignatureError,
    check_agent_receipt,
    check_delegation_bounds,
)
from store import ReceiptRecord

PARTY_ROLES = ("prosumer", "representative")
ReceiptHook = Callable[[AgentReceipt], Awaitable[None]]


def add_handler(node: Node, msg_type: type[Any], handler: Callable[[PeerConnection, Any], Awaitable[None]]) -> None:
    """Register ``handler`` for ``msg_type`` after any handler already there (both run)."""
    previous = node.handlers.get(msg_type)
    if previous is None:
        node.handle(msg_type, handler)
        return

    async def both(conn: PeerConnection, msg: Any) -> None:
        await previous(conn, msg)
        await handler(conn, msg)

    node.handle(msg_type, both)


def trade_id_for(bhash: bytes, index: int) -> bytes:
    """Deterministic trade id of match ``index`` of a book: re-runs give the same ids."""
    return hashlib.blake2b(bhash + index.to_bytes(4, "big"), digest_size=16).digest()


def terms_for(result: ClearingResult, bhash: bytes, orders: dict[bytes, AgentOrder], broker: str,
              created_at: int) -> list[AgentTerms]:
    """The terms of every match of ``result``: what the broker proposes and what audits recompute."""
    out = []
    assert result.price is not None or not result.matches
    for i, m in enumerate(result.matches):
        s, b = orders[m.sell_id], orders[m.buy_id]
        out.append(AgentTerms(trade_id_for(bhash, i), s.principal, s.agent, b.principal, b.agent, broker,
                              s.order_id, b.order_id, s.slot_start, s.slot_len, m.wh,
                              result.price or 1, created_at))
    return out


def rerun(orders: list[AgentOrder]) -> tuple[bytes, ClearingResult]:
    """Anyone's re-run of a published book: (book hash, result)."""
    bhash = book_hash(o.encode() for o in orders)
    return bhash, clear([BookOrder(o.order_id, o.side, o.wh, o.price) for o in orders], bhash)


@dataclass
class _Slot:
    orders: dict[bytes, AgentOrder] = field(default_factory=dict)
    delegations: dict[bytes, Delegation | None] = field(default_factory=dict)
    closed: bool = False
    summary: ClearingSummary | None = None
    receipts: list[AgentReceipt] = field(default_factory=list)


@dataclass
class _Proposal:
    terms: AgentTerms
    broker_sig: bytes
    sigs: dict[str, bytes] = field(default_factory=dict)  # "sell"/"buy" -> sig
    done: trio.Event = field(default_factory=trio.Event)
    refused: str | None = None


class Broker:
    """The auctioneer. Needs a broker credential; never trades for itself."""

    def __init__(self, node: Node, *, slot_len: int = 900, gate_closure: int = 300,
                 sign_timeout: float = 10.0) -> None:
        if node.identity.credential.role != "broker":
            raise TradeError("only a broker credential may run the auction", Reason.BAD_ROLE)
        self.node = node
        self.slot_len = slot_len
        self.gate_closure = gate_closure
        self.sign_timeout = sign_timeout
        self.slots: dict[int, _Slot] = {}
        self.proposals: dict[bytes, _Proposal] = {}
        self.credentials: dict[str, Credential] = {}
        self.counters: Counter[str] = Counter()
        self.last_result: ClearingResult | None = None
        node.handle(BrokerSubmit, self._on_submit)
        node.handle(MatchSign, self._on_sign)
        node.handle(Refused2, self._on_refused)

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        return int(self.node.clock.now())

    async def _on_submit(self, conn: PeerConnection, msg: BrokerSubmit) -> None:
        assert conn.peer is not None
        o = msg.order
        try:
            self._check_submit(conn.peer, o, msg.delegation)
        except TradeError as exc:
            reason = exc.reason if isinstance(exc.reason, Reason) else Reason.PROTOCOL_ERROR
            self.counters[f"submits_refused:{reason.name}"] += 1
            await conn.send(Refused2(o.order_id, int(reason), str(exc)[:200]))
            return
        slot = self.slots.setdefault(o.slot_start, _Slot())
        slot.orders[o.order_id] = o
        slot.delegations[o.order_id] = msg.delegation
        self.credentials[conn.peer.member_id] = conn.peer
        self.counters["orders_in"] += 1
        await conn.send(BrokerAccepted(o.order_id))

    def _check_submit(self, peer: Credential, o: AgentOrder, delegation: Delegation | None) -> None:
        if peer.role not in PARTY_ROLES:
            raise TradeError(f"a {peer.role} may not trade", Reason.BAD_ROLE)
        if o.agent != peer.member_id:
            raise TradeError("order not signed by the submitting member", Reason.NOT_A_MEMBER)
        try:
            o.verify(peer.sign_pk)
        except SignatureError as exc:
            raise TradeError("order signature does not verify", Reason.BAD_SIGNATURE) from exc
        if (o.principal == o.agent) != (delegation is None):
            raise TradeError("delegation missing or superfluous", Reason.NOT_A_MEMBER)
        if delegation is not None and (delegation.principal, delegation.agent) != (o.principal, o.agent):
            raise TradeError("delegation names other members", Reason.NOT_A_MEMBER)
        if o.slot_len != self.slot_len:
            raise TradeError("wrong slot length", Reason.OUT_OF_BOUNDS)
        slot = self.slots.get(o.slot_start)
        if (slot is not None and slot.closed) or self.now() >= o.slot_start - self.gate_closure:
            raise TradeError("gate closed for that slot", Reason.EXPIRED)
        if slot is not None and o.order_id in slot.orders:
            raise TradeError("order id already in the book", Reason.REPLAY)
        if slot is not None:
            # A member's bid at or above its own ask could be matched with
            # itself (a wash trade, and terms with seller == buyer). Pairs
            # that do not cross can never match each other, so only those
            # that cross are refused.
            for other in slot.orders.values():
                if other.principal == o.principal and other.side != o.side:
                    bid, ask = (o, other) if o.side == "buy" else (other, o)
                    if bid.price >= ask.price:
                        raise TradeError("crosses the member's own order in this slot",
                                         Reason.OUT_OF_BOUNDS)

    async def close_slot(self, slot_start: int) -> ClearingSummary:
        """Clear a slot, gather countersignatures, send receipts, publish the book."""
        slot = self.slots.setdefault(slot_start, _Slot())
        slot.closed = True
        orders = list(slot.orders.values())
        bhash, result = rerun(orders)
        self.last_result = result
        all_terms = terms_for(result, bhash, slot.orders, self.me, self.now())
        key = self.node.identity.keys.signing
        for terms in all_terms:
            self.proposals[terms.trade_id] = _Proposal(terms, terms.sign(key))
        async with trio.open_nursery() as nursery:
            for terms in all_terms:
                nursery.start_soon(self._finish, slot, terms, bhash)
        summary = ClearingSummary.create(
            key, broker=self.me, slot_start=slot_start, slot_len=self.slot_len, orders=len(orders),
            book_hash=bhash, result_hash=result.result_hash(), price=result.price or 0,
            volume_wh=result.volume_wh)
        slot.summary = summary
        await self.publish(slot_start)
        self.counters["slots_cleared"] += 1
        return summary

    async def _finish(self, slot: _Slot, terms: AgentTerms, bhash: bytes) -> None:
        prop = self.proposals[terms.trade_id]
        for agent, other in ((terms.seller_agent, terms.buyer_agent), (terms.buyer_agent, terms.seller_agent)):
            try:
                await self.node.send_to(agent, MatchPropose(terms, bhash, prop.broker_sig,
                                                            self.credentials[other]))
            except (PeerGone, TradeError, Exception):
                prop.refused = f"{agent} unreachable"
                prop.done.set()
        with trio.move_on_after(self.sign_timeout):
            await prop.done.wait()
        if prop.refused or len(prop.sigs) < 2:
            self.counters["matches_failed"] += 1
            log.info("match_failed", trade=terms.trade_id.hex(), why=prop.refused or "timeout")
            return
        receipt = AgentReceipt(terms, slot.delegations.get(terms.seller_order),
                               slot.delegations.get(terms.buyer_order), prop.sigs["sell"],
                               prop.sigs["buy"], prop.broker_sig)
        slot.receipts.append(receipt)
        self.counters["matches_final"] += 1
        await self._deliver(receipt)

    async def _deliver(self, receipt: AgentReceipt) -> None:
        terms = receipt.terms
        for agent in {terms.seller_agent, terms.buyer_agent}:
            try:
                await self.node.send_to(agent, MatchFinal(receipt))
            except Exception:
                pass

    async def _on_sign(self, conn: PeerConnection, msg: MatchSign) -> None:
        assert conn.peer is not None
        prop = self.proposals.get(msg.trade_id)
        if prop is None or prop.done.is_set():
            return
        t = prop.terms
        for side, agent in (("sell", t.seller_agent), ("buy", t.buyer_agent)):
            if agent == conn.peer.member_id and side not in prop.sigs:
                try:
                    t.verify(conn.peer.sign_pk, msg.signature)
                except SignatureError:
                    continue
                prop.sigs[side] = msg.signature
                break
        if len(prop.sigs) == 2:
            prop.done.set()

    async def _on_refused(self, conn: PeerConnection, msg: Refused2) -> None:
        prop = self.proposals.get(msg.ref)
        if prop is not None and not prop.done.is_set():
            prop.refused = f"{conn.member_id}: {Reason(msg.reason).name} {msg.message}"
            self.counters[f"matches_refused:{Reason(msg.reason).name}"] += 1
            prop.done.set()

    async def publish(self, slot_start: int) -> None:
        slot = self.slots[slot_start]
        orders = sorted(slot.orders.values(), key=lambda o: o.order_id)
        for i in range(0, max(len(orders), 1), BOOK_CHUNK_MAX):
            await self.node.broadcast(BookChunk(slot_start, tuple(orders[i : i + BOOK_CHUNK_MAX])))
        assert slot.summary is not None
        await self.node.broadcast(ClearingAnnounce(slot.summary))


@dataclass
class _Own:
    order: AgentOrder
    delegation: Delegation | None
    remaining: int
    accepted: trio.Event = field(default_factory=trio.Event)
    refusal: Refused2 | None = None


class BrokerClient:
    """A party's side of the auction (prosumer or representative)."""

    def __init__(self, node: Node, *, commit: Callable[[AgentReceipt], Awaitable[None]] | None = None,
                 submit_timeout: float = 5.0) -> None:
        self.node = node
        self.commit = commit
        self.submit_timeout = submit_timeout
        self.own: dict[bytes, _Own] = {}
        self.pending: dict[bytes, tuple[MatchPropose, bytes]] = {}  # trade id -> (proposal, our sig)
        self.receipts: dict[bytes, AgentReceipt] = {}
        self.books: dict[int, list[AgentOrder]] = {}
        self.summaries: dict[int, ClearingSummary] = {}
        self.credentials: dict[str, Credential] = {node.member_id: node.identity.credential}
        self.counters: Counter[str] = Counter()
        self.on_receipt: list[ReceiptHook] = []
        # Delegations of other agents' principals (from delegation gossip), to
        # assemble a receipt without the broker.
        self.delegations: dict[tuple[str, str], Delegation] = {}
        node.handle(BrokerAccepted, self._on_accepted)
        add_handler(node, Refused2, self._on_refused)
        node.handle(MatchPropose, self._on_propose)
        node.handle(MatchFinal, self._on_final)
        node.handle(MatchSign, self._on_peer_sign)
        node.handle(BookChunk, self._on_book)
        node.handle(ClearingAnnounce, self._on_summary)
        node.on_open.append(self._on_open)

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        self.credentials.setdefault(conn.peer.member_id, conn.peer)

    def make_order(self, side: str, slot_start: int, slot_len: int, wh: int, price: int, *,
                   principal: str | None = None, expiry: int | None = None,
                   order_id: bytes | None = None) -> AgentOrder:
        return AgentOrder.create(
            self.node.identity.keys.signing, order_id=order_id or os.urandom(16),
            principal=principal or self.node.member_id, agent=self.node.member_id, side=side,
            slot_start=slot_start, slot_len=slot_len, wh=wh, price=price,
            expiry=slot_start if expiry is None else expiry)

    async def submit(self, broker: str, order: AgentOrder, delegation: Delegation | None = None) -> None:
        """Send ``order`` to the broker; returns once it is in the book.

        Raises TradeError (refused; TIMEOUT if no answer; NOT_FOUND if no session).
        """
        if self.node.identity.credential.role not in PARTY_ROLES:
            raise TradeError("this role may not trade", Reason.BAD_ROLE)
        own = self.own.setdefault(order.order_id, _Own(order, delegation, order.wh))
        conn = self.node.sessions.get(broker)
        if conn is None:
            raise TradeError(f"no session with broker {broker}", Reason.NOT_FOUND)
        try:
            await conn.send(BrokerSubmit(order, delegation))
        except PeerGone as exc:
            raise TradeError("broker gone", Reason.TIMEOUT) from exc
        with trio.move_on_after(self.submit_timeout):
            await own.accepted.wait()
        if own.refusal is not None:
            del self.own[order.order_id]
            raise TradeError(f"broker refused: {own.refusal.message}", Reason(own.refusal.reason))
        if not own.accepted.is_set():
            raise TradeError("broker did not answer", Reason.TIMEOUT)

    async def _on_accepted(self, conn: PeerConnection, msg: BrokerAccepted) -> None:
        own = self.own.get(msg.order_id)
        if own is not None:
            own.accepted.set()

    async def _on_refused(self, conn: PeerConnection, msg: Refused2) -> None:
        own = self.own.get(msg.ref)
        if own is not None and not own.accepted.is_set():
            own.refusal = msg
            own.accepted.set()

    def check_proposal(self, broker: Credential, msg: MatchPropose) -> tuple[str, _Own]:
        """Our side of a proposal, or TradeError: the rules that stop a cheating broker."""
        t = msg.terms
        if broker.role != "broker" or t.broker != broker.member_id:
            raise TradeError("proposal not from the broker it names", Reason.BAD_ROLE)
        try:
            t.verify(broker.sign_pk, msg.broker_sig)
        except SignatureError as exc:
            raise TradeError("broker signature does not verify", Reason.BAD_SIGNATURE) from exc
        me = self.node.member_id
        side = "sell" if t.seller_agent == me else "buy" if t.buyer_agent == me else ""
        ref = t.seller_order if side == "sell" else t.buyer_order
        own = self.own.get(ref) if side else None
        if own is None:
            raise TradeError("no order of ours behind this match", Reason.NOT_FOUND)
        o = own.order
        principal = t.seller if side == "sell" else t.buyer
        if (o.side, o.principal, o.slot_start, o.slot_len) != (side, principal, t.slot_start, t.slot_len):
            raise TradeError("match does not fit our order", Reason.OUT_OF_BOUNDS)
        if (side == "sell" and t.price < o.price) or (side == "buy" and t.price > o.price):
            raise TradeError(f"price {t.price} beyond our limit {o.price}", Reason.OUT_OF_BOUNDS)
        if t.wh > own.remaining:
            raise TradeError(f"only {own.remaining} Wh remain", Reason.INSUFFICIENT)
        try:
            check_delegation_bounds(t, side, own.delegation)
        except BoundsError as exc:
            raise TradeError(str(exc), exc.reason) from exc
        return side, own

    async def _on_propose(self, conn: PeerConnection, msg: MatchPropose) -> None:
        assert conn.peer is not None
        t = msg.terms
        if t.trade_id in self.pending or t.trade_id in self.receipts:
            return
        try:
            side, own = self.check_proposal(conn.peer, msg)
        except TradeError as exc:
            reason = exc.reason if isinstance(exc.reason, Reason) else Reason.PROTOCOL_ERROR
            self.counters[f"proposals_refused:{reason.name}"] += 1
            await conn.send(Refused2(t.trade_id, int(reason), str(exc)[:200]))
            return
        try:
            self.node.policy.check(msg.counterparty, self.node.clock.now())
        except Exception:
            await conn.send(Refused2(t.trade_id, int(Reason.NOT_A_MEMBER), "counterparty credential"))
            return
        other = t.buyer_agent if side == "sell" else t.seller_agent
        if msg.counterparty.member_id != other:
            await conn.send(Refused2(t.trade_id, int(Reason.NOT_A_MEMBER), "counterparty credential"))
            return
        self.credentials.setdefault(other, msg.counterparty)
        own.remaining -= t.wh  # reserved: never sign more than the order holds
        sig = t.sign(self.node.identity.keys.signing)
        self.pending[t.trade_id] = (msg, sig)
        self.credentials.setdefault(conn.peer.member_id, conn.peer)
        self.counters["proposals_signed"] += 1
        await conn.send(MatchSign(t.trade_id, sig))

    async def _on_final(self, conn: PeerConnection, msg: MatchFinal) -> None:
        await self._accept(msg.receipt)

    async def _accept(self, receipt: AgentReceipt) -> bool:
        t = receipt.terms
        pending = self.pending.get(t.trade_id)
        if pending is None or pending[0].terms != t or t.trade_id in self.receipts:
            self.counters["finals_unexpected"] += 1
            return False
        try:
            check_agent_receipt(receipt, self.credentials)
        except (BoundsError, SignatureError) as exc:
            self.counters["finals_rejected"] += 1
            log.warning("final_rejected", trade=t.trade_id.hex(), why=str(exc))
            return False
        # Claim the match before awaiting (a concurrent duplicate then finds
        # nothing pending), and show the receipt only once it is durable.
        claimed = self.pending.pop(t.trade_id)
        if self.commit is not None:
            try:
                await self.commit(receipt)
            except BaseException:
                self.pending[t.trade_id] = claimed
                raise
        self.receipts[t.trade_id] = receipt
        self.counters["receipts"] += 1
        for hook in self.on_receipt:
            await hook(receipt)
        return True

    async def finish_directly(self) -> int:
        """Broker gone: send our countersignatures straight to the other agents.

        A match both agents signed becomes a receipt on both sides (the
        proposal carries the broker's signature); one the other side never
        signed stays void. Returns how many signatures were sent.
        """
        sent = 0
        for msg, sig in list(self.pending.values()):
            t = msg.terms
            other = t.buyer_agent if t.seller_agent == self.node.member_id else t.seller_agent
            try:
                await self.node.send_to(other, MatchSign(t.trade_id, sig))
                sent += 1
            except Exception:
                pass
        return sent

    async def _on_peer_sign(self, conn: PeerConnection, msg: MatchSign) -> None:
        """The other agent's signature, sent directly after the broker vanished."""
        assert conn.peer is not None
        pending = self.pending.get(msg.trade_id)
        if pending is None:
            return
        prop, ours = pending
        t = prop.terms
        me_seller = t.seller_agent == self.node.member_id
        other = t.buyer_agent if me_seller else t.seller_agent
        if conn.peer.member_id != other:
            return
        seller_sig, buyer_sig = (ours, msg.signature) if me_seller else (msg.signature, ours)
        own_d = self.own[t.seller_order if me_seller else t.buyer_order].delegation
        other_d = self._delegation_for(t, "buy" if me_seller else "sell")
        sd, bd = (own_d, other_d) if me_seller else (other_d, own_d)
        receipt = AgentReceipt(t, sd, bd, seller_sig, buyer_sig, prop.broker_sig)
        if await self._accept(receipt):
            self.counters["finished_directly"] += 1
            try:  # the other side may not have called finish_directly itself
                await conn.send(MatchSign(t.trade_id, ours))
            except PeerGone:
                pass

    def _delegation_for(self, terms: AgentTerms, side: str) -> Delegation | None:
        key = (terms.seller, terms.seller_agent) if side == "sell" else (terms.buyer, terms.buyer_agent)
        return self.delegations.get(key)

    async def _on_book(self, conn: PeerConnection, msg: BookChunk) -> None:
        self.books.setdefault(msg.slot_start, []).extend(msg.orders)

    async def _on_summary(self, conn: PeerConnection, msg: ClearingAnnounce) -> None:
        self.summaries[msg.summary.slot_start] = msg.summary


def agent_receipt_record(receipt: AgentReceipt, created_at: int) -> ReceiptRecord:
    """A store record for a v2 receipt: keyed by trade id, its own one-trade "order"."""
    t = receipt.terms
    return ReceiptRecord(
        trade_id=t.trade_id, order_id=t.trade_id, seller=t.seller, buyer=t.buyer,
        slot_start=t.slot_start, slot_len=t.slot_len, wh=t.wh, price=t.price, order_wh=t.wh,
        encoded=receipt.encode(), created_at=created_at)


@dataclass
class Audit:
    ok: bool
    problems: list[str]


def audit_slot(orders: list[AgentOrder], summary: ClearingSummary, broker: Credential,
               receipts: list[AgentReceipt], me: str) -> Audit:
    """Re-run a published book and compare with the summary and our receipts.

    Flags a summary that does not match the book, and any match of ours in
    the re-run that we hold no receipt for (a dropped trade), or a receipt of
    ours that is not in the re-run (an added one).
    """
    problems = []
    try:
        summary.verify(broker.sign_pk)
    except SignatureError:
        problems.append("summary not signed by the broker")
    bhash, result = rerun(orders)
    if bhash != summary.book_hash:
        problems.append("published book does not hash to the summary's book hash")
    if result.result_hash() != summary.result_hash:
        problems.append("re-run clearing differs from the broker's result")
    expected = {t.trade_id: t for t in terms_for(result, bhash, {o.order_id: o for o in orders},
                                                   summary.broker, 0)
                if me in (t.seller_agent, t.buyer_agent)}
    held = {r.terms.trade_id: r.terms for r in receipts if r.terms.slot_start == summary.slot_start}
    for tid in expected.keys() - held.keys():
        problems.append(f"match {tid.hex()} of ours missing (dropped by the broker, or refused)")
    for tid in held.keys() - expected.keys():
        problems.append(f"receipt {tid.hex()} is not in the re-run clearing")
    for tid in expected.keys() & held.keys():
        a, b = expected[tid], held[tid]
        if (a.wh, a.price, a.seller, a.buyer) != (b.wh, b.price, b.seller, b.buyer):
            problems.append(f"receipt {tid.hex()} differs from the re-run clearing")
    return Audit(not problems, problems)
