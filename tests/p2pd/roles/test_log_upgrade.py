"""Upgrading a node whose store predates heads signed as p2pd/log-head/2 (store schema 4 -> 5).

Before, the log chained whole receipts ("p2pd/log-entry/1") and heads were
signed as "p2pd/log-head/1"; peers kept those heads. An upgraded node
rebuilds its log over the same receipts and seqs as the digest chain, and
signs heads with another hash for the same seqs: under the new head domain,
so that no peer can pair an old head with a new one as an equivocation
(docs/protocol.md 15, "Upgrading from log-entry/1"). Real nodes over memory
streams with SQLite stores on the real clock (a threaded store lets virtual
time run while it writes), as the restart test in test_replication.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, Community, Identity, eventually, link

from p2pd.market.receipt_log import Followed
from p2pd.net.node import Node
from p2pd.roles.replication import Replication
from protocol import (
    OBSOLETE_HEAD_DOMAIN,
    EquivocationGossip,
    EquivocationProof,
    HeadGossip,
    LogHead,
    Receipt,
    ReceiptChain,
    SignatureError,
    SigningKey,
    TradeTerms,
    digest,
    pack,
)
from store import (
    FollowRecord,
    HeadRecord,
    ReceiptRecord,
    ReplicaRecord,
    Repository,
    SqlRepository,
    open_repository,
)

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


def _receipt(n: int, seller: str, buyer: str, wh: int) -> Receipt:
    terms = TradeTerms(bytes([n]) * 16, b"o" * 16, 1000, seller, buyer, SLOT_START, SLOT, wh, 80_000, int(NOW))
    return Receipt(terms, bytes(64), bytes(64))


def _record(r: Receipt, created_at: int) -> ReceiptRecord:
    t = r.terms
    return ReceiptRecord(t.trade_id, t.order_id, t.seller, t.buyer, t.slot_start, t.slot_len, t.wh, t.price,
                         t.order_wh, r.encode(), created_at)


def _v1_heads(key: SigningKey, member: str, receipts: list[bytes]) -> list[LogHead]:
    """The heads ``member`` signed before the upgrade: over whole receipts, as p2pd/log-head/1."""
    heads, h = [], bytes(32)
    for seq, receipt in enumerate(receipts, start=1):
        h = digest(pack(["p2pd/log-entry/1", h, seq, receipt]))
        unsigned = LogHead(member, seq, h, bytes(64))
        heads.append(LogHead(member, seq, h, key.sign(OBSOLETE_HEAD_DOMAIN, unsigned.body())))
    return heads


def _version_4_store(url: str, fill: Callable[[SqlRepository], None]) -> None:
    """A store as the previous release left it: schema 4, rows written by ``fill``."""
    r = SqlRepository(url)
    try:
        fill(r)
    finally:
        r.close()
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as c:
        c.execute("UPDATE schema_meta SET version = 4")
    c.close()


async def _start(make_node: Any, ident: Identity, url: str) -> tuple[Node, Replication, Repository]:
    node: Node = await make_node(ident.member_id, ident=ident)
    repo = open_repository(url)
    rep = Replication(node, replicas=1, repo=repo)
    await rep.load()
    return node, rep, repo


async def test_an_upgraded_node_keeps_its_seqs_signs_v2_heads_and_no_peer_sees_a_fork(
        make_node: Any, nursery: trio.Nursery, community: Community, tmp_path: Path) -> None:
    alice_id, bob_id, carol_id = (community.member(m) for m in ("alice", "bob", "carol"))
    trades = [_receipt(1, "alice", "bob", 100), _receipt(2, "alice", "bob", 200)]
    encoded = [r.encode() for r in trades]
    carols = _receipt(3, "carol", "dave", 300).encode()
    old_alice = _v1_heads(alice_id.signing, "alice", encoded)  # what alice gossiped, and bob kept
    old_carol = _v1_heads(carol_id.signing, "carol", [carols])
    a_url, b_url = f"sqlite:///{tmp_path}/alice.db", f"sqlite:///{tmp_path}/bob.db"

    def alice_before(r: SqlRepository) -> None:
        r.commit_receipts([_record(t, 10 * i) for i, t in enumerate(trades, start=1)])
        h = old_carol[0]
        r.put_head(HeadRecord("carol", 1, h.head_hash, h.signature))
        # A replica in the raw form of before sealed entries: the receipt itself.
        r.put_replica(ReplicaRecord("carol", 1, carols, h.encode()))
        r.put_follow(FollowRecord("carol", 1, h.head_hash))

    def bob_before(r: SqlRepository) -> None:
        r.commit_receipts([_record(t, 10 * i) for i, t in enumerate(trades, start=1)])
        for h in old_alice:
            r.put_head(HeadRecord("alice", h.seq, h.head_hash, h.signature))
        r.put_follow(FollowRecord("alice", 2, old_alice[-1].head_hash))

    _version_4_store(a_url, alice_before)
    _version_4_store(b_url, bob_before)
    alice, a_rep, a_repo = await _start(make_node, alice_id, a_url)
    bob, b_rep, b_repo = await _start(make_node, bob_id, b_url)
    assert len(a_repo.upgrade_notes) == 1 and "kept 2 own receipts at log seqs 1..2" in a_repo.upgrade_notes[0]
    assert "dropped 1 heads and 1 held entries" in a_repo.upgrade_notes[0]
    assert "dropped 2 heads and 0 held entries" in b_repo.upgrade_notes[0]

    # alice's log: the same receipts at the same seqs, chained as log-entry/2, heads that verify.
    v2 = ReceiptChain()
    for e in encoded:
        v2.append(e)
    assert a_rep.log.chain.entries == encoded and a_rep.log.chain.hashes == v2.hashes
    pk = alice_id.credential.sign_pk
    new_alice = [a_rep.log.page(seq - 1, 1)[1] for seq in (1, 2)]
    for new, old in zip(new_alice, old_alice, strict=True):
        assert new is not None and new.seq == old.seq and new.head_hash != old.head_hash
        new.verify(pk)
        assert old.obsolete(pk) and not new.obsolete(pk)
        with pytest.raises(SignatureError):
            old.verify(pk)
    # What alice held of carol's log is gone; she still follows it, from seq 0.
    assert a_repo.heads() == [] and a_repo.replica_count() == 0
    assert a_rep.fetcher.follows["carol"] == Followed("carol")

    # bob's store dropped alice's old heads; say he still had them in memory.
    assert b_repo.heads() == [] and b_rep.fetcher.follows["alice"] == Followed("alice")
    for h in old_alice:
        b_rep.heads.restore(h)
    await link(bob, alice)  # alice gossips her head at seq 2 on opening
    await eventually(lambda: b_rep.fetcher.follows["alice"].seq == 2)
    await b_rep.fetcher.idle.wait()
    assert b_rep.fetcher.follows["alice"].head_hash == v2.head_hash
    assert b_rep.heads.heads["alice"] == {2: new_alice[1]}  # the old heads forgotten, not compared
    assert not b_rep.heads.proofs and not b_rep.heads.forks and b_rep.heads.obsolete == 2
    assert b_rep.counters["equivocations_detected"] == b_rep.counters["forks_detected"] == 0
    assert [r.seq for r in b_repo.replicas("alice")] == [1, 2]

    # A node not yet upgraded still gossips alice's old heads: a current one drops them as obsolete,
    # and a proof pairing an old head with a new one proves nothing.
    w = await make_node("w")
    w_rep = Replication(w)
    await link(w, alice)
    await eventually(lambda: 2 in w_rep.heads.heads.get("alice", {}))
    conn, _ = await link(bob, w)
    await conn.send(EquivocationGossip(EquivocationProof(old_alice[1], new_alice[1]), alice_id.credential, 3))
    await conn.send(HeadGossip(old_alice[1], alice_id.credential, 3))
    await eventually(lambda: w_rep.counters["heads_obsolete"] == 1)
    assert not w_rep.heads.proofs and w_rep.counters["equivocations_learnt"] == 0
    assert w_rep.heads.heads["alice"] == {2: new_alice[1]}

    # A restart after the upgrade upgrades nothing again and signs byte-identical heads.
    head_before = a_rep.log.head
    await alice.aclose()
    a_repo.close()
    alice, a_rep, a_repo = await _start(make_node, alice_id, a_url)
    assert a_repo.upgrade_notes == []
    assert a_rep.log.head.encode() == head_before.encode()
    again = [a_rep.log.page(seq - 1, 1)[1] for seq in (1, 2)]
    assert [h.encode() if h else b"" for h in again] == [h.encode() if h else b"" for h in new_alice]
    assert [s for s, _ in a_repo.log_entries()] == [1, 2]
    await link(bob, alice)
    await link(w, alice)
    await eventually(lambda: b_rep.heads.has(head_before) and w_rep.heads.has(head_before))
    assert not b_rep.heads.proofs and not w_rep.heads.proofs and not b_rep.heads.forks
    a_repo.close()
    b_repo.close()
