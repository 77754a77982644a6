"""kill -9 the seller at random points during a burst of trades.

Every receipt the buyer was handed (the seller acknowledged it) must be in
the seller's database after restart, no order may be sold beyond its size,
and SQLite's integrity check must pass.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from p2pd_test_helpers import Community, node_identity

from p2pd.errors import NotConnected, PeerGone, TradeError
from p2pd.net.listener import dial
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from store import MemoryRepository, open_repository

SELLER = Path(__file__).with_name("crash_seller.py")
ORDER_WH = 8_000
TAKE_WH = 10
KILLS = 4


def start_seller(spec_path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(SELLER), str(spec_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the child prints READY or exits
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"seller did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.mark.slow
async def test_kill_9_seller_during_trade_burst(tmp_path: Path, nursery: trio.Nursery) -> None:
    rng = random.Random(1234)
    community = Community()
    seller = community.member("seller")
    now = int(time.time())
    # The test runs in real time: credentials around now.
    seller = community.member("seller", valid_from=now - 3600, valid_until=now + 86400)
    buyer_ident = community.member("buyer", valid_from=now - 3600, valid_until=now + 86400)
    slot_start = (now // 900 + 3) * 900
    order_id = os.urandom(16)
    db = tmp_path / "seller.db"
    spec = {
        "signing": seller.signing.seed().hex(), "noise": seller.noise_private.hex(),
        "credential": seller.credential.encode().hex(), "issuer": community.issuer.public.hex(),
        "community": community.name, "db": f"sqlite:///{db}", "order_id": order_id.hex(),
        "slot_start": slot_start, "wh": ORDER_WH, "price": 90_000,
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))

    node = Node(node_identity(buyer_ident), community.policy(), nursery)
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    market = Market(node, repo, writer, rules=MarketRules(take_timeout=1.0, take_attempts=1))

    # Build the buyer's market once; it reconnects to each restarted seller.
    acknowledged: dict[bytes, int] = {}
    unanswered: list[bytes] = []

    async def taker(stop: trio.Event) -> None:
        for _ in range(10_000):  # bounded
            if stop.is_set() or sum(acknowledged.values()) >= ORDER_WH:
                return
            trade_id = os.urandom(16)
            try:
                receipt = await market.take(order_id, TAKE_WH, trade_id=trade_id)
            except (TradeError, NotConnected, PeerGone):
                unanswered.append(trade_id)
                return
            acknowledged[receipt.terms.trade_id] = receipt.terms.wh

    for round_ in range(KILLS + 1):
        proc, port = start_seller(spec_path)
        try:
            with trio.fail_after(20):
                await dial(node, "127.0.0.1", port)
                while order_id not in market.book and order_id not in market.cancelled:
                    await trio.sleep(0.01)
            stop = trio.Event()
            async with trio.open_nursery() as burst:
                for _ in range(8):
                    burst.start_soon(taker, stop)
                if round_ < KILLS:
                    await trio.sleep(rng.uniform(0.05, 0.3))
                    proc.send_signal(signal.SIGKILL)
                    stop.set()
                # in the last round the takers run until the order is sold out
            if round_ == KILLS:
                # Retry every take that got no answer, with its trade id:
                # committed ones come back as the stored receipt, others may
                # trade now or be refused; none can trade twice.
                for trade_id in unanswered:
                    try:
                        receipt = await market.take(order_id, TAKE_WH, trade_id=trade_id)
                    except (TradeError, NotConnected, PeerGone):
                        continue
                    acknowledged[receipt.terms.trade_id] = receipt.terms.wh
        finally:
            proc.kill()
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
        with trio.fail_after(10):
            while "seller" in node.sessions:
                await trio.sleep(0.01)

    # Retrying unanswered takes (same trade id) after the last restart must
    # never create a second trade for the same id: check in the database.
    check = open_repository(f"sqlite:///{db}")
    try:
        stored = {r.trade_id: r for r in check.receipts_for_order(order_id)}
        missing = [tid.hex() for tid in acknowledged if tid not in stored]
        assert not missing, f"acknowledged receipts lost: {missing}"
        assert sum(r.wh for r in stored.values()) <= ORDER_WH
        assert len(stored) == len({r.trade_id for r in stored.values()})
        assert check.integrity_check() == "ok"
    finally:
        check.close()
    assert len(acknowledged) > 0
    # The kills really landed mid-burst: some takes were cut off unanswered.
    assert unanswered
