"""Durable trades per second between two nodes, against the signature ceiling.

Two nodes over loopback TCP, each in its own process (a home gateway runs
one node): the seller is a child process of this script. Every trade costs
two Ed25519 signs and two verifies, and a commit on each side (SQLite WAL,
synchronous=FULL, group commit). The ceiling is the signature work alone,
measured in this same run on one core; the ratio is what the benchmark
reports. Then: how long a new order takes to reach every node of a community
of 10, 50 and 200 nodes (in-memory streams, each node linked to a few random
others).

Usage: python bench/trades.py [--trades N] [--quick]
Last line of output: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.net.listener import dial, serve_p2p
from p2pd.net.node import Node, NodeLimits, open_node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from p2pd.sim.quiet import until
from protocol import Credential, SigningKey, TradeTerms, TrustPolicy
from store import open_repository

COMMUNITY = "bench"


def x25519() -> bytes:
    return NodeKeys.generate().noise_private


def make_member(issuer: SigningKey, member_id: str, now: int) -> NodeIdentity:
    keys = NodeKeys.generate()
    cred = Credential.issue(issuer, community=COMMUNITY, member_id=member_id, role="prosumer",
                            metering_point=f"EAN{abs(hash(member_id)) % 10**12}",
                            sign_pk=keys.signing.public, noise_pk=keys.noise_public,
                            valid_from=now - 3600, valid_until=now + 86400)
    return NodeIdentity(keys, cred)


# --- the seller child process --------------------------------------------------------


async def seller_main(spec: dict[str, Any]) -> None:
    keys = NodeKeys(SigningKey.from_seed(bytes.fromhex(spec["signing"])), bytes.fromhex(spec["noise"]))
    identity = NodeIdentity(keys, Credential.decode(bytes.fromhex(spec["credential"])))
    policy = TrustPolicy(COMMUNITY, frozenset({bytes.fromhex(spec["issuer"])}))
    repo = open_repository(spec["db"])
    async with open_node(identity, policy) as node:
        writer = ReceiptWriter(repo)
        await node.nursery.start(writer.run)
        market = Market(node, repo, writer)
        await market.post("sell", spec["slot_start"], 10_000_000, 90_000,
                          order_id=bytes.fromhex(spec["order_id"]))
        listeners = await node.nursery.start(serve_p2p, node, "127.0.0.1", 0)
        print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)
        await trio.sleep_forever()


# --- measurements --------------------------------------------------------------------


def signature_ceiling(seconds: float = 1.0) -> float:
    """Trades/s if a trade cost only its 2 signs + 2 verifies (one core)."""
    a, b = SigningKey.generate(), SigningKey.generate()
    terms = TradeTerms(os.urandom(16), os.urandom(16), 1000, "alice", "bob", 900 * 10, 900, 1,
                       90_000, 0)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        s1 = terms.sign(a)
        terms.verify(a.public, s1)
        s2 = terms.sign(b)
        terms.verify(b.public, s2)
        n += 1
    return n / (time.perf_counter() - start)


async def first_line(stream: trio.abc.ReceiveStream) -> str:
    """The child's first line of output (its READY line)."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError(f"the seller exited before it was ready: {data!r}")
        data += chunk
    return data.split(b"\n", 1)[0].decode()


async def measure_trades(total: int, workdir: Path, concurrency: int = 128) -> dict[str, Any]:
    now = int(time.time())
    issuer = SigningKey.generate()
    seller = make_member(issuer, "seller", now)
    buyer = make_member(issuer, "buyer", now)
    order_id = os.urandom(16)
    spec = {
        "signing": seller.keys.signing.seed().hex(), "noise": seller.keys.noise_private.hex(),
        "credential": seller.credential.encode().hex(), "issuer": issuer.public.hex(),
        "db": f"sqlite:///{workdir / 'seller.db'}", "order_id": order_id.hex(),
        "slot_start": (now // 900 + 3) * 900,
    }
    spec_path = workdir / "seller.json"
    spec_path.write_text(json.dumps(spec))
    proc = await trio.lowlevel.open_process([sys.executable, __file__, "--seller", str(spec_path)],
                                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(60):
            port = int((await first_line(proc.stdout)).split()[1])
        policy = TrustPolicy(COMMUNITY, frozenset({issuer.public}))
        repo = open_repository(f"sqlite:///{workdir / 'buyer.db'}")
        async with open_node(buyer, policy) as node:
            writer = ReceiptWriter(repo)
            await node.nursery.start(writer.run)
            market = Market(node, repo, writer, rules=MarketRules(take_timeout=30))
            await dial(node, "127.0.0.1", port)
            with trio.fail_after(10):
                await until(lambda: order_id in market.book)
            done = 0
            start = time.perf_counter()

            async def taker(count: int) -> None:
                nonlocal done
                for _ in range(count):
                    await market.take(order_id, 1)
                    done += 1

            async with trio.open_nursery() as n:
                for i in range(concurrency):
                    n.start_soon(taker, total // concurrency + (1 if i < total % concurrency else 0))
            elapsed = time.perf_counter() - start
            batches = writer.transactions
        repo.close()
        seller_repo = open_repository(spec["db"])
        stored = len(seller_repo.receipts_for_order(order_id))
        seller_repo.close()
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            if proc.stdout:
                await proc.stdout.aclose()
    return {"trades": done, "seconds": elapsed, "per_s": done / elapsed, "seller_stored": stored,
            "buyer_transactions": batches}


async def measure_gossip(n_nodes: int, degree: int, seed: int) -> float:
    """Seconds from posting an order until every node's book holds it."""
    rng = random.Random(seed)
    now = int(time.time())
    issuer = SigningKey.generate()
    policy = TrustPolicy(COMMUNITY, frozenset({issuer.public}))
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        markets: list[Market] = []
        for i in range(n_nodes):
            node = Node(make_member(issuer, f"m{i:04d}", now), policy, nursery,
                        limits=NodeLimits(max_connections=64))
            repo = open_repository("memory://")
            writer = ReceiptWriter(repo)
            await nursery.start(writer.run)
            nodes.append(node)
            markets.append(Market(node, repo, writer))
        edges = {(i, (i + 1) % n_nodes) for i in range(n_nodes)}  # a ring keeps it connected
        while len(edges) < n_nodes * degree // 2:
            a, b = rng.sample(range(n_nodes), 2)
            if (b, a) not in edges:
                edges.add((a, b))
        for a, b in sorted(edges):
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(nodes[b].accept, server, f"m{a}")
            await nodes[a].connect_stream(client, f"m{b}")
        slot = (now // 900 + 3) * 900
        start = time.perf_counter()
        order = await markets[0].post("sell", slot, 1000, 90_000)
        with trio.fail_after(120):
            await until(lambda: all(order.order_id in m.book for m in markets))
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="fewer trades and smaller communities")
    parser.add_argument("--seller", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seller:
        with open(args.seller, encoding="utf-8") as fh:
            trio.run(seller_main, json.load(fh))
        return
    total = 1000 if args.quick else args.trades
    ceiling = signature_ceiling()
    with tempfile.TemporaryDirectory() as tmp:
        trades = trio.run(measure_trades, total, Path(tmp))
    ratio = trades["per_s"] / ceiling
    print(f"durable trades: {trades['trades']} in {trades['seconds']:.2f} s = "
          f"{trades['per_s']:.0f}/s (seller stored {trades['seller_stored']}, "
          f"buyer commits in {trades['buyer_transactions']} transactions)")
    print(f"signature ceiling (2 signs + 2 verifies, one core): {ceiling:.0f} trades/s")
    print(f"ratio: {ratio:.2f} (goal >= 0.5)")
    sizes = (10, 50) if args.quick else (10, 50, 200)
    reach = {}
    for n in sizes:
        reach[n] = trio.run(measure_gossip, n, 4, n)
        print(f"order reaches all {n} nodes in {reach[n] * 1000:.1f} ms")
    figures = {
        "trades_per_s": round(trades["per_s"], 1),
        "signature_ceiling_per_s": round(ceiling, 1),
        "ratio": round(ratio, 3),
        "trades": trades["trades"],
        "gossip_reach_ms": {str(n): round(t * 1000, 1) for n, t in reach.items()},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
