"""Broker figures: clearing time per slot size, and gate closure to signed trades.

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


def main() -> None:
    times = clearing_times()
    for n, s in times.items():
        print(f"clearing {int(n):>7,} orders in one slot: {s * 1000:8.1f} ms")
    s3 = trio.run(s3_community, 50, load_test_helpers())
    print(f"S3, {s3['nodes']} nodes: gate closure -> every party holds its signed trades "
          f"({s3['trades']} trades) in {s3['seconds'] * 1000:.1f} ms")
    print(json.dumps({"clearing_s": times, "s3_gate_to_receipts": s3}, sort_keys=True))


if __name__ == "__main__":
    main()
