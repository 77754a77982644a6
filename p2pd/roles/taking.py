"""The taker's side of an S1 take: fixed terms, sent and retried until answered.

A take's terms are signed once and stored as a pending take before the
``Take`` leaves the node (docs/protocol.md §12.7); every retry -- by the
user, when a session with the owner opens, after a restart -- sends the same
bytes, so the owner's stored receipt answers it. :class:`Taking` is a part
of :class:`~p2pd.roles.trading.Market` (which it is mixed into); the owner's
side of a take lives there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import log, storage
from p2pd.errors import (
    NotConnected,
    PeerFault,
    PeerGone,
    TradeError,
    TradeNotStored,
    TradeRefused,
    TradeTimeout,
)
from p2pd.events import TradeCommitted
from p2pd.market.book import BookEntry, OrderBook, describe_terms
from p2pd.market.errors import Refusal
from p2pd.market.rules import MarketRules
from p2pd.market.take import BadAnswer, check_answer, terms_for_take
from p2pd.market.trade import Refused, Side, TradeLedger
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.receipts import commit_outcome, receipt_parties_of_terms, receipt_record
from protocol import Credential, Reason, Receipt, Take, TradeAccepted, TradeTerms
from protocol import TradeRefused as TradeRefusedMsg
from store import PendingTakeRecord, Repository, StorageUnavailable

PENDING_TAKE_KEEP = 7 * 86400  # s after its slot ends that an unanswered take is retried


@dataclass
class _PendingTake:
    terms: TradeTerms
    done: trio.Event = field(default_factory=trio.Event)
    answer: TradeAccepted | TradeRefusedMsg | None = None



def _slot_end(pending: PendingTakeRecord) -> int:
    terms = TradeTerms.decode(pending.terms)
    return terms.slot_start + terms.slot_len


class Taking:
    """Taker-side state and actions of a market (mixed into Market)."""

    node: Node
    repo: Repository
    writer: ReceiptWriter
    rules: MarketRules
    orderbook: OrderBook
    trades: TradeLedger[Receipt]
    credentials: dict[str, Credential]
    counters: Any
    random_bytes: Callable[[int], bytes]
    _pending: dict[bytes, _PendingTake]
    _pending_takes: dict[bytes, PendingTakeRecord]
    _taking: dict[bytes, trio.Event]

    def _init_taking(self) -> None:
        self._pending = {}  # answers awaited, by trade id
        self._pending_takes = {}  # unanswered takes, mirrored in the store
        self._taking = {}  # a take being sent, by trade id

    @property
    def me(self) -> str:
        return self.node.member_id

    def now(self) -> int:
        raise NotImplementedError  # Market's

    async def reach_owner(self, entry: BookEntry) -> str:
        raise NotImplementedError  # Pseudonymous's (p2pd/roles/anon.py)

    async def _write_local(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store write for a local action; TradeNotStored if the storage refuses it."""
        try:
            return await storage.call(self.repo, fn, *args)
        except StorageUnavailable as exc:
            raise TradeNotStored(f"our store cannot write: {exc}") from exc

    async def take(self, order_id: bytes, wh: int, *, trade_id: bytes | None = None) -> Receipt:
        """Take ``wh`` of someone's order; returns the committed receipt.

        The terms are fixed once: signed and stored as a pending take before
        the take is sent (p2pd/market/trade.py). A retry with the same
        ``trade_id`` -- by the user, or by this node after a reconnect or a
        restart (:meth:`retry_pending`) -- sends the same bytes, so the owner
        answers with the receipt it stored, even after its order sold out or
        expired. Raises :class:`TradeRefused` (the rules or the owner said
        no), :class:`PeerFault` (the owner's answer is invalid),
        :class:`TradeTimeout` (no answer yet: the take stays pending and is
        retried), :class:`TradeNotStored` (the owner committed, our store
        cannot: the take stays pending) or :class:`NotConnected`; every
        TradeError carries the trade id.
        """
        if trade_id is not None:
            # A retry: if we already hold the receipt, that is the answer.
            rec = await storage.call(self.repo, self.repo.get_receipt, trade_id)
            if rec is not None:
                return Receipt.decode(rec.encoded)
            pending = self._pending_takes.get(trade_id)
            if pending is not None:
                return await self._take(pending)
        entry = self.orderbook.entry_for_take(order_id, retry=trade_id is not None)
        if entry is None:
            raise TradeRefused("unknown or expired order", Reason.NOT_FOUND, trade_id=trade_id)
        # A pseudonymous order's owner comes forward first (docs/protocol.md 12.8).
        owner = await self.reach_owner(entry)
        try:
            terms = terms_for_take(entry, self.me, trade_id or self.random_bytes(16), wh, self.now(), owner)
        except Refusal as exc:
            raise TradeRefused.from_refusal(exc, trade_id=trade_id) from exc
        record = PendingTakeRecord(terms.trade_id, owner, terms.encode(),
                                   terms.sign(self.node.identity.keys.signing), self.now())
        # Durable before it leaves the node: whatever happens next, the same
        # take can be sent again.
        await self._write_local(self.repo.put_pending_take, record)
        self._pending_takes[terms.trade_id] = record
        try:
            return await self._take(record)
        except NotConnected:
            await self._forget_pending(terms.trade_id)  # it never left the node
            raise

    async def _take(self, pending: PendingTakeRecord) -> Receipt:
        """Send the pending take and see it through: commit the receipt, or refuse.

        One attempt per trade id at a time: a second caller (the user's retry
        while a reconnect retries it too) waits for the first and gets its result.
        """
        tid = pending.trade_id
        running = self._taking.get(tid)
        if running is not None:
            await running.wait()
            rec = await storage.call(self.repo, self.repo.get_receipt, tid)
            if rec is not None:
                return Receipt.decode(rec.encoded)
            known = self.trades.get(tid)
            if known is not None and known.refusal is not None:
                r = known.refusal
                raise TradeRefused(f"take refused: {r.message}", r.reason, r.remaining_wh, trade_id=tid)
            raise TradeTimeout("no answer from the order's owner; the take stays pending", trade_id=tid)
        done = self._taking[tid] = trio.Event()
        try:
            return await self._take_once(pending)
        finally:
            del self._taking[tid]
            done.set()

    async def _take_once(self, pending: PendingTakeRecord) -> Receipt:
        terms = TradeTerms.decode(pending.terms)
        tid = terms.trade_id
        owner_cred = self.credentials.get(pending.owner)
        trade = self.trades.get(tid)
        if trade is None or trade.finished:
            self.trades.forget(tid)
            trade = self.trades.open(tid, Side.TAKER, receipt_parties_of_terms(terms), self.now())
        take = Take(terms, pending.taker_sig)
        answer = await self._send_take(pending.owner, take)
        if isinstance(answer, TradeRefusedMsg):
            self.counters[f"takes_refused:{answer.reason_code.name}"] += 1
            trade.refuse(Refused(answer.reason_code, answer.message, answer.remaining_wh))
            await self._forget_pending(tid)
            raise TradeRefused(f"take refused: {answer.message}", answer.reason_code,
                               answer.remaining_wh, trade_id=tid)
        if answer is None:
            raise TradeTimeout("no answer from the order's owner; the take stays pending and is "
                               "retried when a session with the owner opens", trade_id=tid)
        if owner_cred is None:  # pragma: no cover - a session implies a known credential
            raise PeerFault("order owner's credential unknown", Reason.NOT_A_MEMBER, trade_id=tid)
        try:
            check_answer(terms, answer.receipt, take.taker_sig, pending.owner, owner_cred.sign_pk)
        except BadAnswer as exc:
            raise PeerFault(str(exc), exc.reason, trade_id=tid) from exc
        trade.countersigned(answer.receipt)
        try:
            outcome = await self.writer.commit(receipt_record(answer.receipt, self.now()))
        except StorageUnavailable as exc:
            self.trades.forget(tid)  # not recorded here: a retry with the trade id starts afresh
            raise TradeNotStored(f"the owner committed the trade but our store cannot record it: {exc}; "
                                 f"retry with trade id {tid.hex()}", trade_id=tid) from exc
        decision = commit_outcome(trade, outcome)
        if isinstance(decision.answer, Refused):  # pragma: no cover - the owner enforced it already
            log.error("receipt_over_order", trade=tid.hex())
            raise TradeRefused(decision.answer.message, decision.answer.reason, trade_id=tid)
        await self._forget_pending(tid)
        if decision.fresh:
            self.counters["trades_taken"] += 1
            self.node.events.publish(TradeCommitted(**describe_terms(terms), role="taker"))
        return decision.answer.receipt

    async def _forget_pending(self, trade_id: bytes) -> None:
        if self._pending_takes.pop(trade_id, None) is not None:
            await storage.call(self.repo, self.repo.delete_pending_take, trade_id)

    async def drop_stale_pending(self) -> int:
        """Forget pending takes whose slot ended over :data:`PENDING_TAKE_KEEP` ago.

        By then an answer can no longer change what is delivered; a receipt
        the owner did commit still reaches us by reconciliation.
        """
        now = self.now()
        stale = [p for p in self._pending_takes.values()
                 if _slot_end(p) + PENDING_TAKE_KEEP < now]
        for pending in stale:
            log.warning("pending_take_dropped", trade=pending.trade_id.hex(), owner=pending.owner)
            self.counters["pending_takes_dropped"] += 1
            await self._forget_pending(pending.trade_id)
        return len(stale)

    async def retry_pending(self, owner: str) -> int:
        """Send again every pending take of ours with ``owner``; returns how many were settled.

        Run when a session with ``owner`` opens (and after a restart, as
        sessions open): a take whose answer was lost gets its receipt now.
        """
        settled = 0
        for pending in [p for p in self._pending_takes.values() if p.owner == owner]:
            try:
                await self._take(pending)
            except (TradeTimeout, NotConnected, PeerGone):
                continue
            except TradeError:
                settled += 1  # refused: final, and forgotten
                continue
            settled += 1
            self.counters["takes_recovered"] += 1
        return settled

    async def _send_take(self, owner: str, take: Take) -> TradeAccepted | TradeRefusedMsg | None:
        """Send ``take`` to ``owner`` up to ``take_attempts`` times; its answer or None.

        Raises :class:`NotConnected` only if the take never left this node.
        """
        pending = self._pending.setdefault(take.terms.trade_id, _PendingTake(take.terms))
        sent = False
        try:
            for _attempt in range(self.rules.take_attempts):
                conn = self.node.sessions.get(owner)
                if conn is None:
                    if not sent:
                        raise NotConnected(f"no session with {owner}")
                    break
                try:
                    sent = True  # a broken send may still have delivered it
                    await conn.send(take)
                except PeerGone:
                    continue
                with trio.move_on_after(self.rules.take_timeout):
                    await pending.done.wait()
                if pending.answer is not None:
                    break
                self.counters["take_retries"] += 1
        finally:
            self._pending.pop(take.terms.trade_id, None)
        return pending.answer

    async def _on_answer(self, conn: PeerConnection, msg: TradeAccepted | TradeRefusedMsg) -> None:
        trade_id = msg.receipt.terms.trade_id if isinstance(msg, TradeAccepted) else msg.trade_id
        pending = self._pending.get(trade_id)
        if pending is None or pending.done.is_set():
            self.counters["answers_unexpected"] += 1
            return
        pending.answer = msg
        pending.done.set()

