"""Lazy gossip links (p2pd/net/gossip_lazy.py): bodies once, ids elsewhere, repair, interop.

Virtual time (``autojump_clock``): announcement rounds pass instantly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, link

from p2pd.net.gossip_lazy import MIN_EAGER, PRUNE_FLOOR
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import GossipHave, GossipLink, GossipWant, Reason
from protocol.trading import GossipBatch, OrderGossip
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 4) * SLOT
LAZY = 60.0  # announcement interval in these tests


@dataclasses.dataclass
class Trader:
    node: Node
    market: Market
    bodies: list[tuple[str, bytes]]  # (from, order id) of every order body received
    haves: list[str]  # who sent us a GossipHave


Make = Callable[..., Awaitable[Trader]]


@pytest.fixture
def make_trader(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery) -> Make:
    async def factory(member_id: str, **rules: Any) -> Trader:
        node = await make_node(member_id)
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer,
                        rules=MarketRules(take_timeout=2.0, **{"gossip_lazy_interval": LAZY, **rules}))
        trader = Trader(node, market, [], [])
        for msg_type in (OrderGossip, GossipBatch, GossipHave):
            handler = node.handlers[msg_type]

            async def spy(conn: PeerConnection, msg: Any, handler: Any = handler) -> None:
                if isinstance(msg, OrderGossip):
                    trader.bodies.append((conn.member_id, msg.order.order_id))
                elif isinstance(msg, GossipBatch):
                    trader.bodies += [(conn.member_id, o.order.order_id) for o in msg.orders]
                else:
                    trader.haves.append(conn.member_id)
                await handler(conn, msg)

            node.handlers[msg_type] = spy  # replace, on purpose
        return trader

    return factory


async def mesh(traders: list[Trader]) -> None:
    for i, a in enumerate(traders):
        for b in traders[i + 1 :]:
            await link(a.node, b.node)
    await trio.sleep(1)


async def post_rounds(traders: list[Trader], rounds: int) -> list[bytes]:
    """Each trader posts ``rounds`` orders, one round a minute; returns the ids."""
    ids = []
    for r in range(rounds):
        for k, t in enumerate(traders):
            order = await t.market.post("sell", SLOT_START, 100 + 10 * r + k, 80_000)
            ids.append(order.order_id)
        await trio.sleep(60)
    await trio.sleep(4 * LAZY)
    return ids


def lazy_links(t: Trader) -> set[str]:
    return {c.member_id for c in t.market.gossip.links.lazy}


async def test_bodies_thin_out_to_a_tree_and_everyone_sees_everything(autojump_clock: Any,
                                                                      make_trader: Make) -> None:
    traders = [await make_trader(f"m{i}") for i in range(6)]
    await mesh(traders)  # 15 sessions; a tree needs 5
    assert all(t.market.gossip.links.peers for t in traders)  # every session declared GossipLink
    early = await post_rounds(traders, 2)
    before = sum(len(t.bodies) for t in traders)
    late = await post_rounds(traders, 3)
    assert all(oid in t.market.book for t in traders for oid in early + late)
    # The eager sessions thinned out: flooding would deliver each order to
    # each other node over every session but the one it came from (5x here).
    # Each node keeps PRUNE_FLOOR (3) of its 5 sessions eager, so in a mesh
    # this small an order still reaches a node about twice, not once.
    per_order = (sum(len(t.bodies) for t in traders) - before) / (len(late) * (len(traders) - 1))
    assert per_order <= PRUNE_FLOOR - 1
    lazy = sum(len(lazy_links(t)) for t in traders) // 2
    assert 15 - lazy >= 5  # still spanning: at least a tree of eager sessions
    # Its peers' prunes may leave a node below PRUNE_FLOOR, never below MIN_EAGER.
    for t in traders:
        assert len(t.node.sessions) - len(lazy_links(t)) >= MIN_EAGER
    # Lazy links agree on both ends.
    for t in traders:
        for other in lazy_links(t):
            assert t.node.member_id in lazy_links(next(x for x in traders if x.node.member_id == other))


async def test_a_node_that_never_sends_gossip_link_gets_every_body(autojump_clock: Any,
                                                                  make_trader: Make) -> None:
    new = [await make_trader(f"n{i}") for i in range(4)]
    old = await make_trader("old", gossip_lazy_interval=0.0)  # the behaviour before GossipLink
    await mesh(new + [old])
    assert not old.market.gossip.links.peers and not old.market.gossip.links.sent
    for t in new:
        conn = t.node.sessions["old"]
        assert conn not in t.market.gossip.links.peers  # old never declared it
    ids = await post_rounds(new, 3)
    assert all(oid in old.market.book for oid in ids)
    assert old.haves == []  # nobody announced ids to it: it got bodies
    assert {oid for _, oid in old.bodies} >= set(ids)
    for t in new:
        assert "old" not in lazy_links(t)
    # ...and what the old node posts reaches everyone too.
    mine = await old.market.post("sell", SLOT_START, 777, 80_000)
    await trio.sleep(10)
    assert all(mine.order_id in t.market.book for t in new)


async def test_a_peer_that_closes_on_gossip_link_is_remembered(autojump_clock: Any, make_trader: Make) -> None:
    # A node that knows GossipControl but predates GossipLink closes on type 51.
    alice, bob = await make_trader("alice"), await make_trader("bob")

    async def refuse(conn: PeerConnection, msg: GossipLink) -> None:
        await conn.close(Reason.INVALID_MESSAGE, "unknown message type 51")

    bob.node.handlers[GossipLink] = refuse
    await link(alice.node, bob.node)
    await trio.sleep(1)
    assert "bob" in alice.market.gossip.links.legacy
    assert "bob" not in alice.market.gossip.legacy  # it does speak GossipControl
    await link(alice.node, bob.node)  # the next session: GossipControl, no GossipLink
    await trio.sleep(1)
    conn = alice.node.sessions["bob"]
    assert conn in alice.market.gossip.peer_mode and conn not in alice.market.gossip.links.sent
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await trio.sleep(10)
    assert order.order_id in bob.market.book


async def test_a_node_cut_off_from_the_tree_learns_by_announcement_and_grafts(autojump_clock: Any,
                                                                            make_trader: Make) -> None:
    # a - b - c and b - d; c makes b-c lazy: it gets only ids from b, asks, and takes bodies again.
    a, b, c, d = [await make_trader(n) for n in ("a", "b", "c", "d")]
    await link(a.node, b.node)
    await link(b.node, c.node)
    await link(b.node, d.node)
    await trio.sleep(1)
    await c.market.gossip.links._send_link(c.node.sessions["b"], False)
    await trio.sleep(1)
    assert "c" in lazy_links(b) and "b" in lazy_links(c)
    wants: list[GossipWant] = []
    handler = b.node.handlers[GossipWant]

    async def spy(conn: PeerConnection, msg: GossipWant) -> None:
        wants.append(msg)
        await handler(conn, msg)

    b.node.handlers[GossipWant] = spy
    order = await a.market.post("sell", SLOT_START, 1000, 80_000)
    await trio.sleep(5)
    assert order.order_id in b.market.book and order.order_id not in c.market.book
    await trio.sleep(2 * LAZY)
    assert c.haves == ["b"] and [w.orders() for w in wants] == [[order.order_id]]
    assert order.order_id in c.market.book
    assert "b" not in lazy_links(c) and "c" not in lazy_links(b)  # grafted: eager again
    later = await a.market.post("sell", SLOT_START, 500, 80_000)
    await trio.sleep(5)
    assert later.order_id in c.market.book and ("b", later.order_id) in c.bodies


async def test_closing_an_eager_link_makes_lazy_links_eager(autojump_clock: Any, make_trader: Make) -> None:
    traders = [await make_trader(f"m{i}") for i in range(6)]  # more sessions than PRUNE_FLOOR
    await mesh(traders)
    await post_rounds(traders, 2)
    t = next(t for t in traders if lazy_links(t))
    eager = [c for c in t.node.sessions.values() if c.member_id not in lazy_links(t)]
    assert eager
    await eager[0].close(Reason.NORMAL, "going away")
    await trio.sleep(1)
    assert lazy_links(t) == set()
    ids = await post_rounds(traders, 1)
    assert all(oid in x.market.book for x in traders for oid in ids)


async def test_want_is_answered_only_with_what_is_held(autojump_clock: Any, make_trader: Make) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(alice.node, bob.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await trio.sleep(5)
    got: list[Any] = []
    handler = bob.node.handlers[GossipBatch]

    async def spy(conn: PeerConnection, msg: Any) -> None:
        got.append(msg)
        await handler(conn, msg)

    bob.node.handlers[GossipBatch] = spy
    await bob.node.sessions["alice"].send(GossipWant(order.order_id + bytes(16), b""))
    await trio.sleep(1)
    assert [[o.order.order_id for o in m.orders] for m in got] == [[order.order_id]]
