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

import contextlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from p2pd import log
from p2pd.clock import Clock
from p2pd.errors import PeerGone, TradeRefused, TradeTimeout
from p2pd.market.auction import PARTY_ROLES as PARTY_ROLES
from p2pd.market.auction import audit_slot as audit_slot
from p2pd.market.auction import check_proposal, check_submit, match_parties, terms_for
from p2pd.market.auction import rerun as rerun
from p2pd.market.clearing import ClearingResult
from p2pd.market.errors import Refusal
from p2pd.market.trade import Side, TradeLedger
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.receipt_writer import COMMIT_REFUSALS
from p2pd.roles.refusals import refusals_of
from protocol import (
    BOOK_CHUNK_MAX,
    AgentOrder,
    AgentReceipt,
    AgentRefused,
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
    SignatureError,
    check_agent_receipt,
)
from store import ReceiptRecord

ReceiptHook = Callable[[AgentReceipt], Awaitable[None]]


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
                 sign_timeout: float = 10.0, clock: Clock | None = None) -> None:
        if node.identity.credential.role != "broker":
            raise TradeRefused("only a broker credential may run the auction", Reason.BAD_ROLE)
        self.node = node
        self.slot_len = slot_len
        self.gate_closure = gate_closure
        self.sign_timeout = sign_timeout
        self.clock = clock or node.clock  # the market clock: gates and stamps
        self.before_delivery: list[ReceiptHook] = []
        """Awaited with each final receipt before it is sent to the parties
        (an observer's hook; the simulator's broker_crash attack stops the
        node there, as a broker dying at the worst moment would)."""
        self.slots: dict[int, _Slot] = {}
        self.proposals: dict[bytes, _Proposal] = {}
        self.credentials: dict[str, Credential] = {}
        self.counters: Counter[str] = Counter()
        self.last_result: ClearingResult | None = None
        node.handle(BrokerSubmit, self._on_submit)
        node.handle(MatchSign, self._on_sign)
        refusals_of(node).route(self._on_refused)

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        return int(self.clock.now())

    async def _on_submit(self, conn: PeerConnection, msg: BrokerSubmit) -> None:
        assert conn.peer is not None
        o = msg.order
        slot = self.slots.get(o.slot_start)
        try:
            check_submit(conn.peer, o, msg.delegation, book=slot.orders if slot else None,
                         closed=slot is not None and slot.closed, slot_len=self.slot_len,
                         gate_closure=self.gate_closure, now=self.now())
        except Refusal as exc:
            self.counters[f"submits_refused:{exc.reason.name}"] += 1
            await conn.send(AgentRefused(o.order_id, int(exc.reason), exc.message[:200]))
            return
        slot = self.slots.setdefault(o.slot_start, _Slot())
        slot.orders[o.order_id] = o
        slot.delegations[o.order_id] = msg.delegation
        self.credentials[conn.peer.member_id] = conn.peer
        self.counters["orders_in"] += 1
        await conn.send(BrokerAccepted(o.order_id))

    async def close_slot(self, slot_start: int) -> ClearingSummary:
        """Clear a slot, gather countersignatures, send receipts, publish the book."""
        slot = self.slots.setdefault(slot_start, _Slot())
        slot.closed = True
        orders = list(slot.orders.values())
        bhash, result = rerun(orders)
        self.last_result = result
        all_terms = terms_for(result, bhash, slot.orders, self.me, self.now())
        await self.propose_all(slot_start, all_terms, bhash)
        key = self.node.identity.keys.signing
        summary = ClearingSummary.create(
            key, broker=self.me, slot_start=slot_start, slot_len=self.slot_len, orders=len(orders),
            book_hash=bhash, result_hash=result.result_hash(), price=result.price or 0,
            volume_wh=result.volume_wh)
        slot.summary = summary
        await self.publish(slot_start)
        self.counters["slots_cleared"] += 1
        return summary

    def slot(self, slot_start: int) -> _Slot:
        """The slot's book and results (made empty on first use)."""
        return self.slots.setdefault(slot_start, _Slot())

    async def propose_all(self, slot_start: int, all_terms: list[AgentTerms], bhash: bytes) -> None:
        """Propose each match to both agents; returns once each is final or failed.

        ``bhash`` goes into every MatchPropose: the book's hash, or a shared
        clearing's result id (p2pd/roles/sharing.py).
        """
        slot = self.slot(slot_start)
        key = self.node.identity.keys.signing
        for terms in all_terms:
            self.proposals[terms.trade_id] = _Proposal(terms, terms.sign(key))
        async with trio.open_nursery() as nursery:
            for terms in all_terms:
                nursery.start_soon(self._finish, slot, terms, bhash)

    async def _finish(self, slot: _Slot, terms: AgentTerms, bhash: bytes) -> None:
        prop = self.proposals[terms.trade_id]
        for agent, other in ((terms.seller_agent, terms.buyer_agent), (terms.buyer_agent, terms.seller_agent)):
            try:
                await self.node.send_to(agent, MatchPropose(terms, bhash, prop.broker_sig,
                                                            self.credentials[other]))
            except Exception:  # PeerGone, NotConnected, a missing credential: the match fails
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
        for hook in self.before_delivery:
            await hook(receipt)
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

    async def _on_refused(self, conn: PeerConnection, msg: AgentRefused) -> bool:
        prop = self.proposals.get(msg.ref)
        if prop is None or prop.done.is_set():
            return False
        prop.refused = f"{conn.member_id}: {_reason_name(msg.reason)} {msg.message}"
        self.counters[f"matches_refused:{_reason_name(msg.reason)}"] += 1
        prop.done.set()
        return True

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
    refusal: AgentRefused | None = None


class BrokerClient:
    """A party's side of the auction (prosumer or representative).

    Each proposal is a trade of p2pd/market/trade.py on our side (PARTY):
    PROPOSED when it arrives, COUNTERSIGNED once we signed it (the Wh are
    reserved from our order), COMMITTED when the final receipt is durable,
    REFUSED when our checks or the other side said no.
    """

    def __init__(self, node: Node, *, commit: Callable[[AgentReceipt], Awaitable[None]] | None = None,
                 submit_timeout: float = 5.0, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.node = node
        self.commit = commit
        self.submit_timeout = submit_timeout
        self.random_bytes = random_bytes
        self.own: dict[bytes, _Own] = {}
        self.trades: TradeLedger[AgentReceipt] = TradeLedger(match_parties)
        self.pending: dict[bytes, tuple[MatchPropose, bytes]] = {}  # countersigned: (proposal, our sig)
        self.receipts: dict[bytes, AgentReceipt] = {}
        self.books: dict[int, list[AgentOrder]] = {}
        self.summaries: dict[int, ClearingSummary] = {}
        self.credentials: dict[str, Credential] = {node.member_id: node.identity.credential}
        self.counters: Counter[str] = Counter()
        self.on_receipt: list[ReceiptHook] = []
        # Delegations of other agents' principals (from delegation gossip), to
        # assemble a receipt without the broker.
        self.delegations: dict[tuple[str, str], Delegation] = {}
        # Trades we answered a MatchSign for with our own signature after we
        # had committed them, and the session we answered on (its handshake
        # hash): once per session, so two nodes never echo signatures for
        # ever, yet an answer lost with a closing session is given again on
        # the next one.
        self._resent: dict[bytes, bytes] = {}
        # Countersigned matches we finish without the broker (finish_directly):
        # our signature goes again to the other agent whenever a session with
        # it opens, until the receipt is committed here.
        self._finishing: set[bytes] = set()
        node.handle(BrokerAccepted, self._on_accepted)
        refusals_of(node).route(self._on_refused)
        node.handle(MatchPropose, self._on_propose)
        node.handle(MatchFinal, self._on_final)
        node.handle(MatchSign, self._on_peer_sign)
        node.handle(BookChunk, self._on_book)
        node.handle(ClearingAnnounce, self._on_summary)
        node.on_open.append(self._on_open)

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        member = conn.peer.member_id
        self.credentials.setdefault(member, conn.peer)
        for trade_id in sorted(self._finishing):
            pending = self.pending.get(trade_id)
            if pending is None:
                self._finishing.discard(trade_id)
                continue
            msg, sig = pending
            if self._other_agent(msg.terms) == member:
                # Our signature, or the other side's answer, may have been lost
                # with an earlier session (a duplicate replaced, a drop).
                self.counters["signatures_resent_on_open"] += 1
                with contextlib.suppress(PeerGone):
                    await conn.send(MatchSign(trade_id, sig))

    def _other_agent(self, terms: AgentTerms) -> str:
        return terms.buyer_agent if terms.seller_agent == self.node.member_id else terms.seller_agent

    def make_order(self, side: str, slot_start: int, slot_len: int, wh: int, price: int, *,
                   principal: str | None = None, expiry: int | None = None,
                   order_id: bytes | None = None) -> AgentOrder:
        return AgentOrder.create(
            self.node.identity.keys.signing, order_id=order_id or self.random_bytes(16),
            principal=principal or self.node.member_id, agent=self.node.member_id, side=side,
            slot_start=slot_start, slot_len=slot_len, wh=wh, price=price,
            expiry=slot_start if expiry is None else expiry)

    async def submit(self, broker: str, order: AgentOrder, delegation: Delegation | None = None) -> None:
        """Send ``order`` to the broker; returns once it is in the book.

        Raises :class:`TradeRefused` (refused; NOT_FOUND if no session) or
        :class:`TradeTimeout` (no answer).
        """
        if self.node.identity.credential.role not in PARTY_ROLES:
            raise TradeRefused("this role may not trade", Reason.BAD_ROLE)
        own = self.own.setdefault(order.order_id, _Own(order, delegation, order.wh))
        conn = self.node.sessions.get(broker)
        if conn is None:
            raise TradeRefused(f"no session with broker {broker}", Reason.NOT_FOUND)
        try:
            await conn.send(BrokerSubmit(order, delegation))
        except PeerGone as exc:
            raise TradeTimeout("broker gone") from exc
        with trio.move_on_after(self.submit_timeout):
            await own.accepted.wait()
        if own.refusal is not None:
            del self.own[order.order_id]
            raise TradeRefused(f"broker refused: {own.refusal.message}", _reason(own.refusal.reason))
        if not own.accepted.is_set():
            raise TradeTimeout("broker did not answer")

    def expect(self, order: AgentOrder) -> None:
        """Countersign proposals against ``order`` (our own, never submitted: a shared
        clearing's fill, whose ``wh`` is the most we may get) like a submitted one."""
        own = self.own.setdefault(order.order_id, _Own(order, None, order.wh))
        own.accepted.set()

    async def _on_accepted(self, conn: PeerConnection, msg: BrokerAccepted) -> None:
        own = self.own.get(msg.order_id)
        if own is not None:
            own.accepted.set()

    async def _on_refused(self, conn: PeerConnection, msg: AgentRefused) -> bool:
        own = self.own.get(msg.ref)
        if own is None or own.accepted.is_set():
            return False
        own.refusal = msg
        own.accepted.set()
        return True

    def check_proposal(self, broker: Credential, msg: MatchPropose) -> tuple[str, _Own]:
        """Our side of a proposal, or TradeRefused: the rules that stop a cheating broker."""
        held = {oid: (o.order, o.delegation, o.remaining) for oid, o in self.own.items()}
        try:
            side = check_proposal(broker, msg, self.node.member_id, held)
        except Refusal as exc:
            raise TradeRefused.from_refusal(exc, trade_id=msg.terms.trade_id) from exc
        t = msg.terms
        return side, self.own[t.seller_order if side == "sell" else t.buyer_order]

    async def _on_propose(self, conn: PeerConnection, msg: MatchPropose) -> None:
        assert conn.peer is not None
        t = msg.terms
        if self.trades.get(t.trade_id) is not None or t.trade_id in self.receipts:
            return  # Rule 1: a known trade id is never a second trade
        trade = self.trades.open(t.trade_id, Side.PARTY, frozenset((t.seller_agent, t.buyer_agent)),
                                 self.node.clock.now())
        try:
            side, own = self.check_proposal(conn.peer, msg)
            self.node.policy.check(msg.counterparty, self.node.clock.now())
            other = t.buyer_agent if side == "sell" else t.seller_agent
            if msg.counterparty.member_id != other:
                raise Refusal(Reason.NOT_A_MEMBER, "counterparty credential")
        except (TradeRefused, Refusal) as exc:
            refused = trade.refuse(Refusal(exc.reason, str(exc)))
            self.counters[f"proposals_refused:{refused.reason.name}"] += 1
            await conn.send(AgentRefused(t.trade_id, int(refused.reason), refused.message[:200]))
            return
        except Exception:  # CredentialError of the counterparty
            trade.refuse(Refusal(Reason.NOT_A_MEMBER, "counterparty credential"))
            await conn.send(AgentRefused(t.trade_id, int(Reason.NOT_A_MEMBER), "counterparty credential"))
            return
        self.credentials.setdefault(other, msg.counterparty)
        own.remaining -= t.wh  # reserved: never sign more than the order holds
        sig = t.sign(self.node.identity.keys.signing)
        trade.countersigned(None)
        self.pending[t.trade_id] = (msg, sig)
        self.credentials.setdefault(conn.peer.member_id, conn.peer)
        self.counters["proposals_signed"] += 1
        await conn.send(MatchSign(t.trade_id, sig))

    async def _on_final(self, conn: PeerConnection, msg: MatchFinal) -> None:
        await self._accept(msg.receipt)

    async def _accept(self, receipt: AgentReceipt) -> bool:
        t = receipt.terms
        pending = self.pending.get(t.trade_id)
        trade = self.trades.get(t.trade_id)
        if pending is None or pending[0].terms != t or trade is None or trade.finished:
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
            except COMMIT_REFUSALS as exc:
                # Our store cannot commit (disk full): the match stays pending,
                # to be finished by a later MatchFinal or MatchSign; the
                # session with the broker stays open.
                self.pending[t.trade_id] = claimed
                self.counters["finals_not_stored"] += 1
                log.warning("final_not_stored", trade=t.trade_id.hex(), error=str(exc)[:200])
                return False
            except BaseException:
                self.pending[t.trade_id] = claimed
                raise
        trade.committed(receipt, fresh=True)
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
            self._finishing.add(t.trade_id)
            try:
                await self.node.send_to(self._other_agent(t), MatchSign(t.trade_id, sig))
                sent += 1
            except Exception:
                pass
        return sent

    async def _on_peer_sign(self, conn: PeerConnection, msg: MatchSign) -> None:
        """The other agent's signature, sent directly after the broker vanished."""
        assert conn.peer is not None
        pending = self.pending.get(msg.trade_id)
        if pending is None:
            await self._resend_signature(conn, msg.trade_id)
            return
        prop, ours = pending
        t = prop.terms
        me_seller = t.seller_agent == self.node.member_id
        if conn.peer.member_id != self._other_agent(t):
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

    async def _resend_signature(self, conn: PeerConnection, trade_id: bytes) -> None:
        """The broker delivered the final receipt to us but not to the other side.

        Its MatchSign shows it still waits: our signature lets it finish too
        (once per trade and session, so two nodes never echo signatures forever).
        """
        done = self.receipts.get(trade_id)
        assert conn.peer is not None
        if done is None or self._resent.get(trade_id) == conn.handshake_hash:
            return
        t = done.terms
        me_seller = t.seller_agent == self.node.member_id
        if conn.peer.member_id != self._other_agent(t):
            return
        self._resent[trade_id] = conn.handshake_hash
        self.counters["signatures_resent"] += 1
        with contextlib.suppress(PeerGone):
            await conn.send(MatchSign(trade_id, done.seller_sig if me_seller else done.buyer_sig))

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


def _reason(code: int) -> Reason:
    """A received reason code; an unknown one is reported as PROTOCOL_ERROR (as Close does)."""
    try:
        return Reason(code)
    except ValueError:
        return Reason.PROTOCOL_ERROR


def _reason_name(code: int) -> str:
    return _reason(code).name
