"""Receipt logs on real nodes (p2pd/roles/replication.py): replication, equivocation, restarts."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.trading import Market, MarketRules
from protocol.receipt_log import HeadGossip, LogHead, ReceiptChain, ReceiptReplica
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


async def test_s1_receipts_are_logged_by_both_parties_and_replicated(
    make_node: Any, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
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
    await eventually(lambda: order.order_id in markets["bob"].book)
    receipt = await markets["bob"].take(order.order_id, 600)
    await eventually(lambda: reps["alice"].log.chain.seq == 1 and reps["bob"].log.chain.seq == 1)
    assert reps["alice"].log.chain.entries == [receipt.encode()]
    # Two replicas from each party, held by the three other nodes; heads known everywhere.
    await eventually(lambda: sum(reps[m].counters["replicas_held"] for m in ("r1", "r2", "r3")) == 4)
    held = [m for m in ("r1", "r2", "r3")
            if receipt.encode() in [r.entry for p in ("alice", "bob") for r in reps[m].repo.replicas(p)]]
    assert len(held) >= 2
    await eventually(lambda: all(1 in reps[m].heads.heads.get("alice", {}) for m in ("r1", "r2", "r3")))
    assert not any(reps[m].heads.proofs for m in reps)


async def test_an_equivocating_node_is_caught_with_proof(
    make_node: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
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
    await eventually(lambda: all("mallory" in r.heads.proofs for r in reps.values()))
    proof = reps["w2"].heads.proofs["mallory"]
    proof.check(cred)  # anyone holding mallory's credential can check it
    assert {proof.head_a.head_hash, proof.head_b.head_hash} == {one.head_hash, two.head_hash}
    detected = sum(r.counters["equivocations_detected"] for r in reps.values())
    assert detected >= 1


async def test_a_replica_that_does_not_chain_is_a_fork(
    make_node: Any, autojump_clock: trio.testing.MockClock
) -> None:
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
    await eventually(lambda: "mallory" in rep.heads.forks)
    assert rep.counters["forks_detected"] == 1


async def test_refused_and_repeated_takes_never_enter_the_log(
    make_node: Any, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 12, finding 3: a take retried with the same trade id but other terms
    # got the stored receipt back (right), and the owner also appended and
    # gossiped a second, different receipt for that trade id (wrong).
    import dataclasses

    from protocol import Take

    nodes = {n: await make_node(n) for n in ("alice", "bob", "mallory")}
    reps, markets = {}, {}
    for name, node in nodes.items():
        repo = MemoryRepository()
        inner = ReceiptWriter(repo)
        await nursery.start(inner.run)
        reps[name] = rep = Replication(node, replicas=0, repo=repo)
        markets[name] = Market(node, repo, LoggingWriter(inner, rep),  # type: ignore[arg-type]
                               rules=MarketRules(take_timeout=2.0))
    await link(nodes["bob"], nodes["alice"])
    await link(nodes["mallory"], nodes["alice"])
    order = await markets["alice"].post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in markets["bob"].book and order.order_id in markets["mallory"].book)
    receipt = await markets["bob"].take(order.order_id, 600)
    assert reps["alice"].log.chain.entries == [receipt.encode()]
    t = receipt.terms
    answers: list[Any] = []

    async def record(conn: Any, msg: Any) -> None:
        answers.append(msg)

    for who in ("bob", "mallory"):
        for msg_type in (markets[who].node.handlers.keys()):
            if msg_type.__name__ in ("TradeAccepted", "TradeRefused"):
                nodes[who].handlers[msg_type] = record  # replace, on purpose
    key = nodes["bob"].identity.keys.signing
    # Same trade id, other terms (more Wh, a new timestamp): the stored receipt comes back.
    other = dataclasses.replace(t, wh=700, created_at=t.created_at + 5)
    await nodes["bob"].send_to("alice", Take(other, other.sign(key)))
    # Someone else's trade id: REPLAY. Too much: INSUFFICIENT (a new trade id).
    stolen = dataclasses.replace(t, buyer="mallory", created_at=t.created_at + 7)
    await nodes["mallory"].send_to("alice", Take(stolen, stolen.sign(nodes["mallory"].identity.keys.signing)))
    big = dataclasses.replace(t, trade_id=b"B" * 16, wh=500)
    await nodes["bob"].send_to("alice", Take(big, big.sign(key)))
    await eventually(lambda: len(answers) == 3)
    kinds = sorted(type(a).__name__ + ":" + (a.reason_code.name if hasattr(a, "reason_code") else "")
                   for a in answers)
    assert kinds == ["TradeAccepted:", "TradeRefused:INSUFFICIENT", "TradeRefused:REPLAY"]
    accepted = next(a for a in answers if type(a).__name__ == "TradeAccepted")
    assert accepted.receipt == receipt
    # One receipt, one log entry: nothing refused or repeated was logged.
    assert reps["alice"].log.chain.entries == [receipt.encode()]
    assert markets["alice"].repo.log_entries() == [(1, receipt.encode())]


async def test_a_restarted_node_continues_its_log_and_signs_the_same_heads(
        make_node: Any, nursery: trio.Nursery, community: Community, tmp_path: Any) -> None:
    # Issue 12, finding 2: the log lived in memory, so after a restart the next
    # trade signed a different head for seq 1 and peers flagged an equivocation.
    from store import open_repository

    url = f"sqlite:///{tmp_path}/alice.db"
    ident = community.member("alice")
    bob = await make_node("bob")
    b_repo = MemoryRepository()
    b_inner = ReceiptWriter(b_repo)
    await nursery.start(b_inner.run)
    b_market = Market(bob, b_repo, b_inner, rules=MarketRules(take_timeout=2.0))
    b_watch = Replication(bob, replicas=0)  # sees alice's heads, would flag a conflict

    async def run_alice() -> tuple[Any, Replication, Market, Any]:
        node = await make_node("alice", ident=ident)
        repo = open_repository(url)
        inner = ReceiptWriter(repo)
        await nursery.start(inner.run)
        rep = Replication(node, replicas=1, repo=repo)
        await rep.load()
        market = Market(node, repo, LoggingWriter(inner, rep), rules=MarketRules(take_timeout=2.0))  # type: ignore[arg-type]
        await market.load()
        await link(bob, node)
        return node, rep, market, repo

    alice, rep, market, repo = await run_alice()
    order = await market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in b_market.book)
    for wh in (100, 200):
        await b_market.take(order.order_id, wh)
    await eventually(lambda: rep.log.chain.seq == 2 and 2 in b_watch.heads.heads.get("alice", {}))
    head_before = rep.log.head
    # Restart: a new node process with the same keys and store.
    await alice.aclose()
    repo.close()
    alice, rep, market, repo = await run_alice()
    assert rep.log.chain.seq == 2 and rep.log.head == head_before  # byte for byte the same head
    await b_market.take(order.order_id, 300)
    await eventually(lambda: rep.log.chain.seq == 3 and 3 in b_watch.heads.heads.get("alice", {}))
    assert [s for s, _ in repo.log_entries()] == [1, 2, 3]
    assert not b_watch.heads.proofs and not b_watch.heads.forks  # no equivocation, no fork
    repo.close()
