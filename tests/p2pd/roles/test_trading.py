from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.errors import TradeError
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import Reason
from protocol.trading import Order, OrderGossip, Receipt
from store import MemoryRepository, Repository, open_repository

SLOT = 900
# The first slot that is open for trading at NOW with the default rules.
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


@dataclasses.dataclass
class Trader:
    node: Node
    market: Market
    repo: Repository


@pytest.fixture
def make_trader(
    make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery, community: Community
) -> Callable[..., Awaitable[Trader]]:
    async def factory(member_id: str, *, repo: Repository | None = None, **kwargs: Any) -> Trader:
        node = await make_node(member_id, **kwargs)
        repo = repo or MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0))
        return Trader(node, market, repo)

    return factory


async def test_order_spreads_along_a_chain_and_is_taken(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_trader(n) for n in ("alice", "bob", "carol")]
    await link(alice.node, bob.node)
    await link(bob.node, carol.node)
    order = await alice.market.post("sell", SLOT_START, 2000, 90_000)
    await eventually(lambda: order.order_id in carol.market.book)
    # carol (connected only to bob) needs a direct session to take
    await link(carol.node, alice.node)
    receipt = await carol.market.take(order.order_id, 1500)
    assert receipt.terms.seller == "alice" and receipt.terms.buyer == "carol"
    assert receipt.terms.wh == 1500 and receipt.terms.price == 90_000
    # Both sides hold the same receipt, durable in their stores.
    for trader in (alice, carol):
        stored = trader.repo.get_receipt(receipt.terms.trade_id)
        assert stored is not None and stored.encoded == receipt.encode()
    receipt.verify(alice.node.identity.keys.signing.public, carol.node.identity.keys.signing.public)
    assert alice.market.book[order.order_id].remaining_wh == 500


async def test_late_joiner_catches_up(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await link(bob.node, alice.node)
    await eventually(lambda: order.order_id in bob.market.book)


async def test_retry_with_same_trade_id_returns_same_receipt(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book)
    first = await bob.market.take(order.order_id, 400, trade_id=b"T" * 16)
    again = await bob.market.take(order.order_id, 400, trade_id=b"T" * 16)
    assert again.encode() == first.encode()
    assert len(alice.repo.receipts_for_order(order.order_id)) == 1
    assert alice.repo.remaining_wh(order.order_id, order.wh) == 600


async def test_retry_after_sell_out_still_returns_the_receipt(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book)
    first = await bob.market.take(order.order_id, 1000, trade_id=b"S" * 16)
    await eventually(lambda: order.order_id not in bob.market.book)  # sold out, withdrawn
    # bob lost the answer (say): he forgets the receipt and retries the same take
    bob.repo = bob.market.repo = MemoryRepository()
    again = await bob.market.take(order.order_id, 1000, trade_id=b"S" * 16)
    assert again.encode() == first.encode()
    assert len(alice.repo.receipts_for_order(order.order_id)) == 1


async def test_two_takers_race_for_the_last_kwh(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_trader(n) for n in ("alice", "bob", "carol")]
    await link(bob.node, alice.node)
    await link(carol.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book and order.order_id in carol.market.book)
    results: dict[str, Any] = {}

    async def attempt(trader: Trader) -> None:
        try:
            results[trader.node.member_id] = await trader.market.take(order.order_id, 1000)
        except TradeError as exc:
            results[trader.node.member_id] = exc

    async with trio.open_nursery() as n:
        n.start_soon(attempt, bob)
        n.start_soon(attempt, carol)
    wins = [r for r in results.values() if isinstance(r, Receipt)]
    losses = [r for r in results.values() if isinstance(r, TradeError)]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].reason in (Reason.INSUFFICIENT, Reason.NOT_FOUND)
    assert sum(r.wh for r in alice.repo.receipts_for_order(order.order_id)) == 1000


async def test_take_for_more_than_remains_is_refused_with_remaining(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book)
    await bob.market.take(order.order_id, 700)
    with pytest.raises(TradeError) as err:
        await bob.market.take(order.order_id, 400)
    assert err.value.reason == Reason.INSUFFICIENT and err.value.remaining_wh == 300


async def test_fully_sold_order_is_withdrawn_everywhere(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_trader(n) for n in ("alice", "bob", "carol")]
    await link(bob.node, alice.node)
    await link(carol.node, bob.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in carol.market.book)
    await bob.market.take(order.order_id, 1000)
    await eventually(lambda: order.order_id not in carol.market.book)
    with pytest.raises(TradeError) as err:
        await bob.market.take(order.order_id, 1)
    assert err.value.reason == Reason.NOT_FOUND


async def test_buyer_posts_bid_and_seller_fills_it(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    bid = await bob.market.post("buy", SLOT_START, 800, 120_000)
    await eventually(lambda: bid.order_id in alice.market.book)
    receipt = await alice.market.take(bid.order_id, 800)
    assert (receipt.terms.seller, receipt.terms.buyer) == ("alice", "bob")


async def test_forged_tampered_and_foreign_orders_are_dropped(
    make_trader: Callable[..., Any], community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    conn, _ = await link(alice.node, bob.node)
    good = Order.create(alice.node.identity.keys.signing, order_id=b"g" * 16, member_id="alice",
                        side="sell", slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                        expiry=SLOT_START - 300)
    cred = alice.node.identity.credential
    tampered = dataclasses.replace(good, order_id=b"t" * 16, wh=100_000)
    # mallory signs an order in alice's name with her own key
    mallory = community.member("mallory")
    forged = Order.create(mallory.signing, order_id=b"f" * 16, member_id="alice", side="sell",
                          slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                          expiry=SLOT_START - 300)
    outsider = Community(name=community.name).member("eve")
    foreign = Order.create(outsider.signing, order_id=b"e" * 16, member_id="eve", side="sell",
                           slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                           expiry=SLOT_START - 300)
    expired = Order.create(alice.node.identity.keys.signing, order_id=b"x" * 16, member_id="alice",
                           side="sell", slot_start=int(NOW) // SLOT * SLOT, slot_len=SLOT, wh=100,
                           price=50_000, expiry=int(NOW) // SLOT * SLOT - 300)
    for gossip in (OrderGossip(tampered, cred, 3), OrderGossip(forged, cred, 3),
                   OrderGossip(foreign, outsider.credential, 3), OrderGossip(expired, cred, 3),
                   OrderGossip(good, cred, 3), OrderGossip(good, cred, 3)):
        await conn.send(gossip)
    await eventually(lambda: b"g" * 16 in bob.market.book)
    await trio.testing.wait_all_tasks_blocked()  # in-flight gossip is all handled
    assert set(bob.market.book) == {b"g" * 16}
    c = bob.node.counters
    assert c["orders_rejected:BAD_SIGNATURE"] == 2
    assert c["orders_rejected:UNTRUSTED_ISSUER"] == 1
    assert c["orders_rejected:EXPIRED"] == 1
    assert c["orders_duplicate"] == 1


async def test_bad_quantities_and_prices_are_refused_locally(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice = await make_trader("alice")
    for wh, price in ((0, 50_000), (-5, 50_000), (100, 0), (10**12, 50_000), (100, 10**12)):
        with pytest.raises(TradeError):
            await alice.market.post("sell", SLOT_START, wh, price)
    with pytest.raises(TradeError):
        await alice.market.post("sell", SLOT_START + 7, 100, 50_000)  # not slot-aligned
    with pytest.raises(TradeError) as err:
        await alice.market.post("sell", SLOT_START + 30 * 86400, 100, 50_000)
    assert err.value.reason == Reason.OUT_OF_BOUNDS


async def test_cancel_spreads_and_blocks_takes(
    make_trader: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book)
    await alice.market.cancel(order.order_id)
    await eventually(lambda: order.order_id not in bob.market.book)
    assert alice.repo.live_orders(int(NOW)) == []


async def test_sqlite_receipts_survive_reopen(make_trader: Callable[..., Any], tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'alice.db'}"
    alice = await make_trader("alice", repo=open_repository(url))
    bob = await make_trader("bob")
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in bob.market.book)
    receipts = [await bob.market.take(order.order_id, 100) for _ in range(5)]
    alice.repo.close()
    reopened = open_repository(url)
    try:
        assert {r.trade_id for r in reopened.receipts()} == {r.terms.trade_id for r in receipts}
        assert reopened.integrity_check() == "ok"
    finally:
        reopened.close()


async def test_a_take_whose_answer_was_lost_completes_by_itself_on_reconnect(
        make_trader: Callable[..., Any], autojump_clock: Any) -> None:
    # Issue 12, finding 1: the seller committed, the buyer never heard; every
    # retry was rebuilt with fresh terms ("other terms") or failed once the
    # order sold out ("unknown or expired order"). The take is now fixed and
    # stored before it is sent, and retried when a session with the owner opens.
    from p2pd.errors import TradeTimeout
    from protocol import TradeAccepted

    alice, bob = await make_trader("alice"), await make_trader("bob")
    conn, _ = await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 600, 90_000)
    await eventually(lambda: order.order_id in bob.market.book)
    original = bob.node.handlers[TradeAccepted]

    async def lost(c: Any, msg: Any) -> None:  # the answer never arrives
        return None

    bob.node.handlers[TradeAccepted] = lost
    with pytest.raises(TradeTimeout) as err:
        await bob.market.take(order.order_id, 600)
    tid = err.value.trade_id
    assert tid is not None and alice.repo.get_receipt(tid) is not None  # one-sided
    assert bob.repo.get_receipt(tid) is None and [p.trade_id for p in bob.repo.pending_takes()] == [tid]
    # The order sold out and is withdrawn; the session breaks.
    await eventually(lambda: order.order_id not in bob.market.book)
    bob.node.handlers[TradeAccepted] = original
    await conn.close()
    # A new session: bob sends the same take again by itself and gets the stored receipt.
    await link(bob.node, alice.node)
    await eventually(lambda: bob.repo.get_receipt(tid) is not None and not bob.repo.pending_takes())
    assert bob.repo.get_receipt(tid).encoded == alice.repo.get_receipt(tid).encoded  # type: ignore[union-attr]
    assert bob.repo.pending_takes() == [] and bob.market.counters["takes_recovered"] == 1
    # And a user's retry by trade id now answers from the store at once.
    again = await bob.market.take(order.order_id, 600, trade_id=tid)
    assert again.encode() == alice.repo.get_receipt(tid).encoded  # type: ignore[union-attr]


async def test_a_pending_take_survives_the_takers_restart(
        make_trader: Callable[..., Any], community: Community, autojump_clock: Any) -> None:
    from p2pd.errors import TradeTimeout
    from protocol import TradeAccepted

    # The store outlives the node (a MemoryRepository here: with autojump_clock a
    # store that works in threads would let virtual time run while it writes).
    ident = community.member("bob")
    store = MemoryRepository()
    alice = await make_trader("alice")
    bob = await make_trader("bob", repo=store, ident=ident)
    conn, _ = await link(bob.node, alice.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 90_000)
    await eventually(lambda: order.order_id in bob.market.book)

    async def lost(c: Any, msg: Any) -> None:
        return None

    bob.node.handlers[TradeAccepted] = lost
    with pytest.raises(TradeTimeout) as err:
        await bob.market.take(order.order_id, 400)
    tid = err.value.trade_id
    assert tid is not None
    # bob restarts: a new node with the same keys and store, after the order expired.
    await bob.node.aclose()
    autojump_clock.jump(order.expiry - NOW + 60)
    reborn = await make_trader("bob", repo=store, ident=ident)
    await reborn.market.load()
    await link(reborn.node, alice.node)
    await eventually(lambda: reborn.repo.get_receipt(tid) is not None and not reborn.repo.pending_takes())
    assert reborn.repo.get_receipt(tid).encoded == alice.repo.get_receipt(tid).encoded  # type: ignore[union-attr]
    assert reborn.repo.pending_takes() == []
