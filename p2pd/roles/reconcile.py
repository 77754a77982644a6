"""Reconciliation: no receipt stays on one side of a trade for good.

When a session opens, and every ``interval`` seconds for members we traded
with since, each side offers the ids of the receipts it holds of trades with
the other (``HoldingsOffer``, docs/protocol.md section 12.7); the other asks
for those it lacks (``ReceiptsRequest``) and commits what it gets
(``ReceiptsDelivery``) after checking every signature and that both are
parties. A node only ever delivers receipts of trades with the member that
asks.

Which trades are "with" a member: for an S1 receipt, its seller and buyer;
for an agent receipt (S2-S4), its two agents (p2pd.market.agents).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import trio

from p2pd import log, storage
from p2pd.clock import Clock, trio_deadline
from p2pd.errors import PeerGone
from p2pd.market.agents import agent_receipt_parties
from p2pd.market.take import receipt_parties
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import agent_receipt_record
from p2pd.roles.receipts import receipt_record
from p2pd.roles.replication import receipt_kind
from protocol import (
    DELIVERY_MAX,
    OFFER_MAX,
    RECEIPT_V1,
    REQUEST_MAX,
    AgentReceipt,
    BoundsError,
    Credential,
    DecodeError,
    HeldReceipt,
    HoldingsOffer,
    Receipt,
    ReceiptsDelivery,
    ReceiptsRequest,
    SignatureError,
    check_agent_receipt,
)
from store import Committed, Insufficient, Outcome, ReceiptRecord, Repository

RECONCILE_WINDOW = 7 * 86400
"""Receipts committed this long ago or less are offered (as long as a pending take is kept)."""
RECONCILE_INTERVAL = 3600.0
"""While a session lasts, offer again this often to members we traded with since."""

def parties_of(encoded: bytes) -> frozenset[str]:
    """The members a stored receipt is "with": seller and buyer, or the two agents."""
    if receipt_kind(encoded) == RECEIPT_V1:
        return receipt_parties(Receipt.decode(encoded))
    return agent_receipt_parties(AgentReceipt.decode(encoded))


class Reconciler:
    """Offers, asks for and commits the receipts two members hold of each other.

    ``commit`` is the node's receipt writer (so reconciled receipts are
    logged and replicated like any other); ``credentials`` are the members
    this node knows (sessions, gossip); others are looked up in the store.
    """

    def __init__(self, node: Node, repo: Repository, commit: Callable[[ReceiptRecord], Awaitable[Outcome]],
                 *, credentials: Mapping[str, Credential], clock: Clock | None = None,
                 window: int = RECONCILE_WINDOW) -> None:
        self.node = node
        self.repo = repo
        self.commit = commit
        self.credentials = credentials
        self.clock = clock or node.clock
        self.window = window
        self.counters: Counter[str] = Counter()
        self._offered_at: dict[str, int] = {}  # member -> time of our last offer
        node.handle(HoldingsOffer, self._on_offer)
        node.handle(ReceiptsRequest, self._on_request)
        node.handle(ReceiptsDelivery, self._on_delivery)
        node.on_open.append(self._on_open)

    def now(self) -> int:
        return int(self.clock.now())

    async def _held_with(self, member: str, since: int) -> list[bytes]:
        """Ids of the receipts we hold of trades with ``member`` committed since ``since``."""
        records = await storage.call(self.repo, self.repo.receipts, None, since)
        out = []
        for rec in records:
            if member in (rec.seller, rec.buyer):
                out.append(rec.trade_id)
            elif receipt_kind(rec.encoded) != RECEIPT_V1 and member in parties_of(rec.encoded):
                out.append(rec.trade_id)
        return out

    async def offer(self, conn: PeerConnection, since: int | None = None) -> int:
        """Send our holdings with ``conn``'s member; returns how many ids were offered."""
        assert conn.peer is not None
        since = self.now() - self.window if since is None else since
        ids = await self._held_with(conn.peer.member_id, since)
        self._offered_at[conn.peer.member_id] = self.now()
        if not ids:
            return 0
        chunks = [ids[i : i + OFFER_MAX] for i in range(0, len(ids), OFFER_MAX)]
        for i, chunk in enumerate(chunks):
            await conn.send(HoldingsOffer(since, tuple(chunk), i == len(chunks) - 1))
        self.counters["offers_sent"] += len(chunks)
        return len(ids)

    async def _on_open(self, conn: PeerConnection) -> None:
        self.node.spawn_for(conn, self._offer_quietly, conn)

    async def _offer_quietly(self, conn: PeerConnection) -> None:
        try:
            await self.offer(conn)
        except PeerGone:
            pass

    async def _on_offer(self, conn: PeerConnection, msg: HoldingsOffer) -> None:
        missing = []
        for tid in msg.trade_ids:
            if await storage.call(self.repo, self.repo.get_receipt, tid) is None:
                missing.append(tid)
        for i in range(0, len(missing), REQUEST_MAX):
            await conn.send(ReceiptsRequest(tuple(missing[i : i + REQUEST_MAX])))
        self.counters["receipts_requested"] += len(missing)

    async def _on_request(self, conn: PeerConnection, msg: ReceiptsRequest) -> None:
        assert conn.peer is not None
        asker = conn.peer.member_id
        found: list[HeldReceipt] = []
        for tid in msg.trade_ids:
            rec = await storage.call(self.repo, self.repo.get_receipt, tid)
            # Only receipts of trades with the asker: nobody learns others' trades here.
            if rec is None or asker not in parties_of(rec.encoded):
                self.counters["requests_refused"] += rec is not None
                continue
            found.append(HeldReceipt(receipt_kind(rec.encoded), rec.encoded))
        for i in range(0, len(found), DELIVERY_MAX):
            await conn.send(ReceiptsDelivery(tuple(found[i : i + DELIVERY_MAX])))
        self.counters["receipts_delivered"] += len(found)

    async def _on_delivery(self, conn: PeerConnection, msg: ReceiptsDelivery) -> None:
        assert conn.peer is not None
        for held in msg.receipts:
            record = await self._check(conn.peer, held)
            if record is None:
                self.counters["deliveries_rejected"] += 1
                continue
            outcome: Outcome = await self.commit(record)
            if isinstance(outcome, Committed):
                self.counters["receipts_reconciled"] += 1
                log.info("receipt_reconciled", trade=record.trade_id.hex(), peer=conn.peer.member_id)
            elif isinstance(outcome, Insufficient):
                # Both signed more than the order holds: evidence of double selling.
                self.counters["reconciled_over_order"] += 1
                log.warning("reconciled_receipt_over_order", trade=record.trade_id.hex(),
                            peer=conn.peer.member_id)

    async def credential(self, member: str) -> Credential | None:
        if member == self.node.member_id:
            return self.node.identity.credential
        known = self.credentials.get(member)
        if known is not None or member == "":
            return known
        rec = await storage.call(self.repo, self.repo.get_member, member)
        return Credential.decode(rec.credential) if rec is not None else None

    async def _check(self, sender: Credential, held: HeldReceipt) -> ReceiptRecord | None:
        """The receipt as a store record if it is a valid receipt of a trade between us."""
        me = self.node.member_id
        now = self.now()
        try:
            if held.kind == RECEIPT_V1:
                r = Receipt.decode(held.receipt)
                if {me, sender.member_id} != receipt_parties(r):
                    return None
                seller, buyer = await self.credential(r.terms.seller), await self.credential(r.terms.buyer)
                if seller is None or buyer is None:
                    return None
                r.verify(seller.sign_pk, buyer.sign_pk)
                return receipt_record(r, now)
            a = AgentReceipt.decode(held.receipt)
            if {me, sender.member_id} != agent_receipt_parties(a):
                return None
            t = a.terms
            names = {t.seller, t.buyer, t.seller_agent, t.buyer_agent, t.broker} - {""}
            creds = {n: c for n in names if (c := await self.credential(n)) is not None}
            check_agent_receipt(a, creds)
            return agent_receipt_record(a, now)
        except (DecodeError, SignatureError, BoundsError):
            return None

    async def serve(self, interval: float = RECONCILE_INTERVAL, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every ``interval`` s, offer what is new to members with a session."""
        task_status.started()
        while True:
            await trio.sleep_until(trio_deadline(self.clock, self.clock.now() + interval))
            for member, conn in list(self.node.sessions.items()):
                since = self._offered_at.get(member, self.now() - self.window)
                try:
                    await self.offer(conn, since)
                except PeerGone:
                    continue

