"""Broker figures: clearing time per slot size, and gate closure to signed trades.

The S3 figures come twice in one run: with aggregated orders (the broker sees
each representative's price steps) and with shared curves (docs/protocol.md
15, "Shared clearing": it sees only sums), for the same 1,000 households
behind 10 representatives, and their ratio; "->proposals" is the part before
the first match is proposed (clearing the book, or the rounds of shares,
sums and result). Shared clearing proposes one match per pair of
representatives instead of one per pair of steps, so it ends sooner. Its
volume differs: netting leaves a remainder with the largest clients instead
of the last ones (other households reach the broker), limits round to the
1,000 grid, and with these random limits merging steps to two households
makes many limits stricter (the third line: no merging).

    .venv/bin/python bench/clearing.py

Prints a summary; the LAST line is one JSON object.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import random
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import trio
import trio.testing


def clearing_times() -> dict[str, float]:
    from p2pd.market.clearing import BookOrder, clear

    out = {}
    for n in (1_000, 10_000, 100_000):
        rng = random.Random(n)
        book = [BookOrder(rng.randbytes(16), rng.choice(("buy", "sell")), rng.randint(100, 5000),
                          rng.randint(47_000, 139_000)) for _ in range(n)]
        best = min(_timed(functools.partial(clear, book, b"seed")) for _ in range(3))
        out[str(n)] = round(best, 4)
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_test_helpers() -> ModuleType:
    """tests/helpers.py (identities for a community), loaded by path: tests/ is no package."""
    spec = importlib.util.spec_from_file_location(
        "bench_helpers", pathlib.Path(__file__).resolve().parents[1] / "tests" / "helpers.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    sys.modules["bench_helpers"] = helpers  # dataclasses look their module up
    spec.loader.exec_module(helpers)
    return helpers


async def s3_community(n: int, helpers: ModuleType) -> dict[str, float]:
    """Gate closure to every party holding its signed trades: broker + n-1 prosumers, memory streams."""
    NOW, Community, node_identity = helpers.NOW, helpers.Community, helpers.node_identity

    from p2pd.clock import TrioWallClock
    from p2pd.net.node import Node
    from p2pd.roles.broker import Broker, BrokerClient
    from p2pd.sim.quiet import until

    com = Community()
    slot = (int(NOW) // 900 + 2) * 900
    async with trio.open_nursery() as nursery:
        def node(name: str, role: str = "prosumer") -> Node:
            return Node(node_identity(com.member(name, role=role)), com.policy(), nursery,
                        clock=TrioWallClock(NOW))

        bnode = node("broker", "broker")
        broker = Broker(bnode)
        clients = []
        for i in range(n - 1):
            pn = node(f"p{i}")
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(bnode.accept, b, "mem")
            await pn.connect_stream(a, "mem")
            cl = BrokerClient(pn)
            side = "sell" if i % 2 else "buy"
            price = random.Random(i).randint(47_000, 139_000)
            await cl.submit("broker", cl.make_order(side, slot, 900, 1000 + 10 * i, price))
            clients.append(cl)
        t0 = time.perf_counter()
        summary = await broker.close_slot(slot)
        expected = broker.counters["matches_final"]
        with trio.fail_after(60):
            await until(lambda: sum(len(c.receipts) for c in clients) >= 2 * expected)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"nodes": n, "trades": expected, "volume_wh": summary.volume_wh, "seconds": round(elapsed, 4)}


async def s3_households(households: int, reps: int, shared: bool, helpers: ModuleType, *,
                        min_households: int = 2) -> dict[str, Any]:
    """S3 with ``households`` clients behind ``reps`` representatives, cleared at one broker.

    The households are not nodes: their signed delegations and meter reports
    are handed to their representatives (as the messages would be), so the run
    measures the clearing. Each representative nets its clients, then joins
    the shared clearing (``shared``) or submits aggregated orders; the clock
    runs from gate closure until every representative holds its receipts.
    The same households (seed 16) for both kinds.
    """
    from p2pd.clock import TrioWallClock
    from p2pd.components.broker import BrokerRunner
    from p2pd.components.representative import RepresentativeRunner
    from p2pd.market.sharing import price_grid
    from p2pd.net.node import Node
    from p2pd.roles.broker import Broker, BrokerClient
    from p2pd.roles.receipt_writer import ReceiptWriter
    from p2pd.roles.representative import Representative
    from p2pd.roles.sharing import SharedBroker
    from p2pd.roles.sharing_client import SharedClient
    from p2pd.sim.quiet import until
    from protocol import Delegation, MeterReport
    from store import MemoryRepository

    com = helpers.Community()
    now = helpers.NOW
    slot = (int(now) // 900 + 2) * 900
    rng = random.Random(16)
    async with trio.open_nursery() as nursery:
        def node(name: str, role: str) -> Node:
            return Node(helpers.node_identity(com.member(name, role=role)), com.policy(), nursery,
                        clock=TrioWallClock(now))

        bnode = node("broker", "broker")
        broker = Broker(bnode, sign_timeout=30.0)
        sharer = SharedBroker(broker, price_grid(47_000, 139_000, 1000), share_timeout=30.0) if shared else None
        brunner = BrokerRunner(broker, bnode.clock, None, sharer)
        runners = []
        for r in range(reps):
            rnode = node(f"rep{r}", "representative")
            writer = ReceiptWriter(MemoryRepository())
            await nursery.start(writer.run)
            client = BrokerClient(rnode, submit_timeout=30.0)
            share = SharedClient(client, share_wait=30.0, min_households=min_households) if shared else None
            runners.append(RepresentativeRunner(Representative(rnode, writer), rnode.clock, broker="broker",
                                                client=client, shared=share))
            await helpers.link(rnode, bnode)
        for i, a in enumerate(runners):
            for b in runners[i + 1:]:
                await helpers.link(a.rep.node, b.rep.node)
        for i in range(households):
            rep = runners[i % reps].rep
            ident = com.member(f"h{i}")
            net = rng.choice((-1, 1)) * rng.randint(100, 5000)
            floor, ceiling = rng.randint(47_000, 100_000), rng.randint(80_000, 139_000)
            d = Delegation.create(ident.signing, delegation_id=rng.randbytes(16), principal=ident.member_id,
                                  agent=rep.me, max_wh_per_slot=10_000, min_sell_price=floor,
                                  max_buy_price=ceiling, valid_from=int(now) - 60, valid_until=int(now) + 86400)
            assert rep.delegations.rules.accept(d, ident.credential, now)
            rep.reports[(ident.member_id, slot)] = MeterReport.create(
                ident.signing, principal=ident.member_id, agent=rep.me, slot_start=slot, slot_len=900,
                net_wh=net, issued_at=int(now))
        for runner in runners:
            await runner.net_internally(slot)
        with trio.fail_after(60):
            t0 = time.perf_counter()
            for runner in runners:
                await runner.submit(slot)
            if sharer is not None:
                await until(lambda: len(sharer.slots[slot].members) == reps)
            submitted = time.perf_counter() - t0
            t0 = time.perf_counter()
            proposing: list[float] = []
            propose_all = broker.propose_all

            async def timed_propose_all(*args: Any) -> None:
                proposing.append(time.perf_counter())
                await propose_all(*args)

            broker.propose_all = timed_propose_all  # type: ignore[method-assign]
            summary = await (brunner.close_shared(slot) if shared else brunner.close(slot))
            assert summary is not None
            expected = broker.counters["matches_final"]
            await until(lambda: sum(len(r.client.receipts) for r in runners if r.client) >= 2 * expected)
            elapsed = time.perf_counter() - t0
        for runner in runners:
            runner.rep.node.on_close.clear()  # the end of the run is no broker gone
        nursery.cancel_scope.cancel()
    return {"households": households, "representatives": reps, "trades": expected, "price": summary.price,
            "volume_wh": summary.volume_wh, "netted_wh": sum(r.counters["netted_wh"] for r in runners),
            "submit_seconds": round(submitted, 4), "seconds": round(elapsed, 4),
            "to_proposals_seconds": round(proposing[0] - t0, 4) if proposing else None}


def main() -> None:
    times = clearing_times()
    for n, s in times.items():
        print(f"clearing {int(n):>7,} orders in one slot: {s * 1000:8.1f} ms")
    helpers = load_test_helpers()
    s3 = trio.run(s3_community, 50, helpers)
    print(f"S3, {s3['nodes']} nodes: gate closure -> every party holds its signed trades "
          f"({s3['trades']} trades) in {s3['seconds'] * 1000:.1f} ms")
    households, reps = 1000, 10
    aggregated = trio.run(s3_households, households, reps, False, helpers)
    shared = trio.run(s3_households, households, reps, True, helpers)
    unmerged = trio.run(functools.partial(s3_households, households, reps, True, helpers, min_households=1))
    ratio = shared["seconds"] / aggregated["seconds"]
    print(f"S3, {households:,} households behind {reps} representatives (same households, limits at random):")
    print(f"  {'':<44} {'submit':>9} {'gate->receipts':>15} {'(->proposals)':>14}")
    for name, r in (("aggregated orders (broker sees each step)", aggregated),
                    ("shared curves (broker sees sums)", shared),
                    ("shared curves, steps not merged", unmerged)):
        print(f"  {name:<44} {r['submit_seconds'] * 1000:6.1f} ms {r['seconds'] * 1000:12.1f} ms "
              f"{(r['to_proposals_seconds'] or 0) * 1000:10.1f} ms  "
              f"{r['trades']:>3} trades, {r['volume_wh'] / 1000:.1f} kWh at {r['price']}")
    print(f"  ratio shared / aggregated, gate -> receipts: {ratio:.2f}  (MPC anchor: Abidin et al. 2016 "
          f"cleared 2,500 bids in under 5 minutes; target here: 1,000 households in under 10 s)")
    print(json.dumps({"clearing_s": times, "s3_gate_to_receipts": s3,
                      "s3_households": {"aggregated": aggregated, "shared": shared, "shared_unmerged": unmerged,
                                        "ratio": round(ratio, 2)}}, sort_keys=True))


if __name__ == "__main__":
    main()
