"""Following receipt logs (p2pd/roles/log_fetch.py): fetch missing entries, verify, keep.

Real nodes over memory streams with in-memory stores, on virtual time
(``autojump_clock``): message passing takes no virtual time, so
:func:`settle` (every task blocked) means everything triggered is done. A
restart keeps the store object (a threaded SQLite store would let virtual
time run while it writes; the SQL side of heads and follows is tested in
tests/store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, Identity, link

from p2pd.components.replication import fetch_log, log_status
from p2pd.events import EquivocationSeen, ForkSeen, NodeEvent
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.trading import Market, MarketRules
from protocol import (
    HeadGossip,
    LogEntries,
    LogEntry,
    LogHead,
    LogRequest,
    Receipt,
    ReceiptChain,
    ReceiptReplica,
    TradeTerms,
)
from store import MemoryRepository, Repository, StorageUnavailable

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def drain(events: trio.MemoryReceiveChannel[NodeEvent]) -> list[NodeEvent]:
    """The events published so far (the bus buffers 256)."""
    out = []
    for _ in range(256):
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            break
    return out


@dataclass
class Member:
    node: Node
    repo: Repository
    rep: Replication
    market: Market


async def member(make_node: Any, nursery: trio.Nursery, name: str, *, repo: Repository | None = None,
                 ident: Identity | None = None, replicas: int = 2) -> Member:
    node = await make_node(name, ident=ident)
    repo = repo or MemoryRepository()
    inner = ReceiptWriter(repo)
    await nursery.start(inner.run)
    rep = Replication(node, replicas=replicas, repo=repo)
    await rep.load()
    market = Market(node, repo, LoggingWriter(inner, rep), rules=MarketRules(take_timeout=2.0))  # type: ignore[arg-type]
    return Member(node, repo, rep, market)


async def test_parties_follow_each_others_logs_and_a_newcomer_fetches_a_gone_members_log_from_holders(
        make_node: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    m = {n: await member(make_node, nursery, n) for n in ("alice", "bob", "dave", "r1", "r2", "r3")}
    for x in ("bob", "dave", "r1", "r2", "r3"):
        await link(m["alice"].node, m[x].node)
    for x in ("bob", "dave"):
        for r in ("r1", "r2", "r3"):
            await link(m[x].node, m[r].node)
    order = await m["alice"].market.post("sell", SLOT_START, 5000, 80_000)
    await settle()
    for buyer, wh in (("bob", 100), ("dave", 200), ("bob", 300), ("dave", 400), ("bob", 500)):
        await m[buyer].market.take(order.order_id, wh)
    await settle()
    alice = m["alice"].rep
    assert alice.log.chain.seq == 5
    # bob and dave signed receipts with alice: they follow her log, and verify all of
    # it (dave's trades are in it too), up to her last signed head.
    for x in ("bob", "dave"):
        fetcher = m[x].rep.fetcher
        assert fetcher.follows["alice"].seq == 5 and fetcher.follows["alice"].head_hash == alice.log.chain.head_hash
        assert [r.entry for r in m[x].repo.replicas("alice")] == alice.log.chain.entries
    assert "alice" not in m["r1"].rep.fetcher.follows  # holders keep fragments, they do not follow
    # alice is gone. carol never met her and links only to the replica holders,
    # each holding fragments of alice's log: the entries come from them, checked
    # against alice's signed heads (her credential travels with the pages).
    await m["alice"].node.aclose()
    carol = await member(make_node, nursery, "carol")
    for r in ("r1", "r2", "r3"):
        await link(carol.node, m[r].node)
    held = {r: {rec.seq for rec in m[r].repo.replicas("alice")} for r in ("r1", "r2", "r3")}
    assert set().union(*held.values()) == {1, 2, 3, 4, 5}, held  # each entry went to two of them
    got = await fetch_log(carol.rep, "alice")
    assert got["fetched"] == got["verified"] == 5 and got["head"] == alice.log.chain.head_hash.hex()
    assert not got["fork"] and not got["equivocation"]
    assert [r.entry for r in carol.repo.replicas("alice")] == alice.log.chain.entries
    assert carol.rep.counters["log_entries_verified"] == 5
    assert log_status(carol.rep)["following"] == {"alice": {"verified": 5, "latest_head": 5}}
    assert carol.repo.follows()[0].seq == 5 and carol.rep.held == 5


@dataclass
class Signer:
    """Signs heads of one history with the member's own key."""

    ident: Identity
    chain: ReceiptChain

    def head(self, seq: int) -> LogHead:
        return LogHead.create(self.ident.signing, self.ident.member_id, seq, self.chain.hashes[seq])


def answer_with(node: Node, entries: list[bytes], signer: Signer, held: set[int] | None = None) -> list[LogRequest]:
    """Make ``node`` answer every LogRequest with ``entries`` (only the seqs ``held``, if
    given: a holder of fragments), ending at ``signer``'s head."""
    asked: list[LogRequest] = []

    async def answer(conn: Any, msg: LogRequest) -> None:
        asked.append(msg)
        page = entries[msg.after: msg.after + msg.limit]
        if held is not None:
            run = [s for s in range(msg.after + 1, msg.after + 1 + len(page))]
            cut = next((i for i, s in enumerate(run) if s not in held), len(run))
            page = page[:cut]
        head, cred = (signer.head(msg.after + len(page)), signer.ident.credential) if page else (None, None)
        await conn.send(LogEntries(msg.member, msg.after,
                                   tuple(LogEntry(msg.after + i, 1, e) for i, e in enumerate(page, start=1)),
                                   head, cred))

    node.handlers.pop(LogRequest, None)  # replace the fetcher's own answer, on purpose
    node.handle(LogRequest, answer)
    return asked


async def test_a_forged_page_from_a_holder_is_dropped_and_one_from_the_member_is_a_fork(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    ident = community.member("mallory")
    real = ReceiptChain()
    for e in (b"one", b"two", b"three"):
        real.append(e)
    signer = Signer(ident, real)
    carol = await member(make_node, nursery, "carol")
    liar, h1, h2 = await make_node("liar"), await make_node("h1"), await make_node("h2")
    # liar holds "mallory's log" but sends other entries with mallory's real head;
    # h1 and h2 hold fragments of the real one (1 and 3; 2).
    lied = answer_with(liar, [b"one", b"TWO", b"three"], signer)
    answer_with(h1, real.entries, signer, held={1, 3})
    answer_with(h2, real.entries, signer, held={2})
    for holder in (liar, h1, h2):
        await link(carol.node, holder)
    assert [c.member_id for c in carol.rep.fetcher.sources("mallory")] == ["liar", "h1", "h2"]  # by BLAKE2b
    await carol.rep.fetcher.follow("mallory")
    got = await carol.rep.fetcher.fetch("mallory", beyond_known=True)
    assert got == 3 and [r.entry for r in carol.repo.replicas("mallory")] == real.entries
    assert carol.rep.credentials["mallory"] == ident.credential  # it came with the pages
    assert carol.rep.counters["log_entries_fetched"] == 3
    # The liar was asked first: its page proved nothing, it was dropped; no fork.
    assert len(lied) == 1 and carol.rep.counters["log_pages_rejected"] == 1
    assert carol.rep.fetcher.follows["mallory"].head_hash == real.head_hash and not carol.rep.heads.forks
    # Now mallory herself shows dave a history that does not reproduce her own signed head.
    dave = await member(make_node, nursery, "dave")
    mallory = await make_node("mallory", ident=ident)
    answer_with(mallory, [b"one", b"TWO", b"three"], signer)
    await link(dave.node, mallory)
    async with dave.node.events.subscribe() as events:
        await dave.rep.fetcher.follow("mallory")
        assert await dave.rep.fetcher.fetch("mallory", beyond_known=True) == 0
        seen = drain(events)
    assert seen == [ForkSeen("mallory", 3)] and "mallory" in dave.rep.heads.forks
    assert dave.rep.counters["forks_detected"] == 1 and dave.repo.replicas("mallory") == []


async def test_heads_and_followed_logs_survive_a_restart_so_a_later_conflict_is_caught(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    # Issue 12.6: heads learnt from others lived in memory only; a member showing a
    # node one head before its restart and another after was never caught.
    ident, w_ident = community.member("mallory"), community.member("w")
    mallory = await make_node("mallory", ident=ident)
    store = MemoryRepository()
    one, two = ReceiptChain(), ReceiptChain()
    one.append(b"history shown before the restart")
    two.append(b"history shown after it")
    w = await member(make_node, nursery, "w", repo=store, ident=w_ident)
    conn, _ = await link(mallory, w.node)
    await conn.send(HeadGossip(Signer(ident, one).head(1), ident.credential, 1))
    await w.rep.fetcher.follow("mallory")
    await settle()
    await w.node.aclose()
    w = await member(make_node, nursery, "w", repo=store, ident=w_ident)  # restarted on its store
    assert w.rep.heads.latest("mallory") == 1 and "mallory" in w.rep.fetcher.follows
    assert w.rep.credentials["mallory"] == ident.credential  # kept in the store's members
    conn, _ = await link(mallory, w.node)
    async with w.node.events.subscribe() as events:
        await conn.send(HeadGossip(Signer(ident, two).head(1), ident.credential, 1))
        await settle()
        seen = drain(events)
    assert EquivocationSeen("mallory", 1) in seen and "mallory" in w.rep.heads.proofs


class FullDisk(MemoryRepository):
    """A store whose disk refuses every write of replication."""

    def put_head(self, rec: Any) -> bool:
        raise StorageUnavailable("disk full")

    def put_replica(self, rec: Any) -> bool:
        raise StorageUnavailable("disk full")


async def test_a_full_disk_loses_heads_and_replicas_from_the_store_not_the_session(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    ident = community.member("mallory")
    # A receipt of mallory's with strangers: w cannot check its signatures and keeps it anyway.
    receipt = Receipt(TradeTerms(b"t" * 16, b"o" * 16, 100, "mallory", "x", SLOT_START, SLOT, 100, 80_000,
                                 int(NOW)), bytes(64), bytes(64)).encode()
    chain = ReceiptChain()
    chain.append(receipt)
    mallory = await make_node("mallory", ident=ident)
    w = await member(make_node, nursery, "w", repo=FullDisk())
    conn, _ = await link(mallory, w.node)
    head = Signer(ident, chain).head(1)
    await conn.send(HeadGossip(head, ident.credential, 1))
    await conn.send(ReceiptReplica(1, receipt, head))
    await settle()
    assert w.rep.heads.latest("mallory") == 1  # known, in memory
    assert w.rep.counters["heads_unstored"] == 1 and w.rep.counters["replicas_unstored"] == 1
    assert "mallory" in w.node.sessions and not conn.finished.is_set()
