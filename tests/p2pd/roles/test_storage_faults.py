"""A seller whose disk fills mid-trading (issue 12, point 4), in-process.

The seller's SQLite store is capped with ``PRAGMA max_page_count``
(``SqlRepository.limit_pages_for_tests``), which makes SQLite answer
SQLITE_FULL exactly as on a full disk. While it is full, takes are refused
with STORAGE_UNAVAILABLE and every session stays open; once the cap is lifted
the node trades again by itself, the refused trade id included, and every
receipt a taker got is in the seller's store.

Real clock (store calls run in threads, which autojump would race); every
wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from p2pd_test_helpers import NOW, Community, link, node_identity

from p2pd.clock import TrioWallClock
from p2pd.errors import TradeNotStored, TradeRefused
from p2pd.events import OrderSeen
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from p2pd.storage import StoreHealth
from protocol import Order, Reason
from store import MemoryRepository, Repository, SqlRepository, StorageUnavailable, open_repository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT
TAKE_WH = 10


async def trader(name: str, repo: Repository, nursery: trio.Nursery, community: Community) -> Market:
    node = Node(node_identity(community.member(name)), community.policy(), nursery, clock=TrioWallClock(NOW))
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    return Market(node, repo, writer, rules=MarketRules(take_timeout=5.0, take_attempts=1))


async def post_seen_by(owner: Market, takers: list[Market]) -> Order:
    """``owner`` posts a sell order; returns once every taker has it in its book."""
    async with AsyncExitStack() as stack:
        feeds = [await stack.enter_async_context(t.node.events.subscribe()) for t in takers]
        order = await owner.post("sell", SLOT_START, 1_000_000, 90_000)
        for feed in feeds:
            with trio.fail_after(5):
                async for event in feed:
                    if isinstance(event, OrderSeen) and event.order_id == order.order_id.hex():
                        break
    return order


async def test_full_disk_refuses_takes_keeps_sessions_and_resumes(
        tmp_path: Path, nursery: trio.Nursery, community: Community) -> None:
    repo = open_repository(f"sqlite:///{tmp_path / 'alice.db'}")
    assert isinstance(repo, SqlRepository)
    health = StoreHealth(quiet_s=0.0)
    repo.on_write = health.observe
    try:
        alice = await trader("alice", repo, nursery, community)
        bob = await trader("bob", MemoryRepository(), nursery, community)
        carol = await trader("carol", MemoryRepository(), nursery, community)
        to_bob, _ = await link(bob.node, alice.node)
        to_carol, _ = await link(carol.node, alice.node)
        order = await post_seen_by(alice, [bob, carol])
        acknowledged = {(await bob.take(order.order_id, TAKE_WH)).terms.trade_id}

        repo.limit_pages_for_tests(0)  # the disk is full from now on
        refused: TradeRefused | None = None
        with trio.fail_after(30):
            for _ in range(2000):  # bounded: a page holds a few dozen receipts
                try:
                    receipt = await bob.take(order.order_id, TAKE_WH)
                except TradeRefused as exc:
                    refused = exc
                    break
                acknowledged.add(receipt.terms.trade_id)
        assert refused is not None and refused.reason is Reason.STORAGE_UNAVAILABLE, refused
        assert "store" in str(refused) and refused.trade_id is not None
        assert not health.ok and "full" in str(health.last_error)
        # While full: more takes are refused the same way, from both takers;
        # no session closes, and the seller's book is unchanged.
        for market in (bob, carol, bob):
            with pytest.raises(TradeRefused) as again:
                await market.take(order.order_id, TAKE_WH)
            assert again.value.reason is Reason.STORAGE_UNAVAILABLE
        assert not to_bob.finished.is_set() and not to_carol.finished.is_set()
        assert set(alice.node.sessions) == {"bob", "carol"}
        assert alice.counters["takes_refused:STORAGE_UNAVAILABLE"] == 4
        assert alice.node.counters["internal_errors"] == 0
        assert alice.book[order.order_id].remaining_wh == 1_000_000 - TAKE_WH * len(acknowledged)

        repo.limit_pages_for_tests(None)  # space returns: the node resumes by itself
        retried = await bob.take(order.order_id, TAKE_WH, trade_id=refused.trade_id)
        assert retried.terms.trade_id == refused.trade_id
        acknowledged.add(retried.terms.trade_id)
        acknowledged.add((await carol.take(order.order_id, TAKE_WH)).terms.trade_id)
        assert health.ok and health.episodes == 1
        assert to_bob is bob.node.sessions["alice"] and to_carol is carol.node.sessions["alice"]

        # Nothing acknowledged is lost; nothing refused was stored.
        stored = {r.trade_id for r in repo.receipts_for_order(order.order_id)}
        assert stored == acknowledged
        assert repo.integrity_check() == "ok"
    finally:
        repo.close()


async def test_buyers_full_disk_is_a_trade_error_with_the_trade_id(
        tmp_path: Path, nursery: trio.Nursery, community: Community) -> None:
    """The taker's own store refuses the receipt the owner committed: TradeNotStored, then a retry."""
    repo = open_repository(f"sqlite:///{tmp_path / 'bob.db'}")
    assert isinstance(repo, SqlRepository)
    try:
        alice = await trader("alice", MemoryRepository(), nursery, community)
        bob = await trader("bob", repo, nursery, community)
        await link(bob.node, alice.node)
        order = await post_seen_by(alice, [bob])
        repo.limit_pages_for_tests(0)
        failure: TradeNotStored | None = None
        with trio.fail_after(30):
            for _ in range(2000):
                try:
                    await bob.take(order.order_id, TAKE_WH)
                except TradeNotStored as exc:
                    failure = exc
                    break
        assert failure is not None and failure.reason is Reason.STORAGE_UNAVAILABLE
        assert failure.trade_id is not None and isinstance(failure.__cause__, StorageUnavailable)
        assert failure.trade_id.hex() in str(failure)
        # Posting needs the store too: once the orders' pages are full it
        # fails the same way, not with a crash.
        with pytest.raises(TradeNotStored):
            for _ in range(2000):
                await bob.post("sell", SLOT_START, 100, 90_000)
        repo.limit_pages_for_tests(None)
        receipt = await bob.take(order.order_id, TAKE_WH, trade_id=failure.trade_id)
        assert repo.get_receipt(failure.trade_id) is not None
        assert receipt.terms.trade_id == failure.trade_id
    finally:
        repo.close()
