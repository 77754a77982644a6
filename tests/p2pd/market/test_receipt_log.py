"""Receipt replication and equivocation detection between real nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from p2pd_test_helpers import NOW, Community, link

from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.trading import Market, MarketRules
from protocol.receipt_log import HeadGossip, LogHead, ReceiptChain, ReceiptReplica
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


async def wait_for(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    with trio.fail_after(limit):
        while not predicate():
            await trio.sleep(0.001)


async def test_s1_receipts_are_logged_by_both_parties_and_replicated(
        make_node: Any, nursery: trio.Nursery) -> None:
    nodes = [await make_node(n) for n in ("alice", "bob", "r1", "r2", "r3")]
    reps, markets = {}, {}
    for node in nodes:
        repo = MemoryRepository()
        inner = ReceiptWriter(repo)
        await nursery.start(inner.run)
        reps[node.member_id] = rep = Replication(node, replicas=2)
        markets[node.member_id] = Market(node, repo, LoggingWriter(inner, rep),  # type: ignore[arg-type]
                                         rules=MarketRules(take_timeout=2.0))
    alice, bob = nodes[0], nodes[1]
    await link(bob, alice)
    for r in nodes[2:]:
        await link(alice, r)
        await link(bob, r)
    order = await markets["alice"].post("sell", SLOT_START, 1000, 80_000)
    await wait_for(lambda: order.order_id in markets["bob"].book)
    receipt = await markets["bob"].take(order.order_id, 600)
    await wait_for(lambda: reps["alice"].log.chain.seq == 1 and reps["bob"].log.chain.seq == 1)
    assert reps["alice"].log.chain.entries == [receipt.encode()]
    # Two replicas from each party, held by the three other nodes; heads known everywhere.
    await wait_for(lambda: sum(reps[m].counters["replicas_held"] for m in ("r1", "r2", "r3")) == 4)
    held = [m for m in ("r1", "r2", "r3") if receipt.encode() in reps[m].held.values()]
    assert len(held) >= 2
    await wait_for(lambda: all(1 in reps[m].heads.heads.get("alice", {}) for m in ("r1", "r2", "r3")))
    assert not any(reps[m].heads.proofs for m in reps)


async def test_an_equivocating_node_is_caught_with_proof(make_node: Any, community: Community) -> None:
    mallory = await make_node("mallory")
    watchers = [await make_node(n) for n in ("w1", "w2", "w3")]
    reps = {w.member_id: Replication(w) for w in watchers}
    await link(watchers[0], watchers[1])
    await link(watchers[1], watchers[2])
    c1, _ = await link(mallory, watchers[0])
    c3, _ = await link(mallory, watchers[2])
    # mallory shows w1 one history and w3 another, each with a validly signed head at seq 1.
    key, cred = mallory.identity.keys.signing, mallory.identity.credential
    one, two = ReceiptChain(), ReceiptChain()
    one.append(b"receipt sold to w1")
    two.append(b"a different receipt")
    await c1.send(HeadGossip(one.head(key, "mallory"), cred, 1))
    await c3.send(HeadGossip(two.head(key, "mallory"), cred, 3))
    await wait_for(lambda: all("mallory" in r.heads.proofs for r in reps.values()))
    proof = reps["w2"].heads.proofs["mallory"]
    proof.check(cred)  # anyone holding mallory's credential can check it
    assert {proof.head_a.head_hash, proof.head_b.head_hash} == {one.head_hash, two.head_hash}
    detected = sum(r.counters["equivocations_detected"] for r in reps.values())
    assert detected >= 1


async def test_a_replica_that_does_not_chain_is_a_fork(make_node: Any) -> None:
    mallory, w = await make_node("mallory"), await make_node("w")
    rep = Replication(w)
    conn, _ = await link(mallory, w)
    key = mallory.identity.keys.signing
    chain = ReceiptChain()
    chain.append(b"first")
    await conn.send(ReceiptReplica(1, b"first", chain.head(key, "mallory")))
    # seq 2 signed over something other than the entry sent with it (the replica
    # bytes need not be a receipt w can verify: mallory's own signatures are the proof)
    await conn.send(ReceiptReplica(1, b"second", LogHead.create(key, "mallory", 2, b"x" * 32)))
    await wait_for(lambda: "mallory" in rep.heads.forks)
    assert rep.counters["forks_detected"] == 1
