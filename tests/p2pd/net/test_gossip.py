"""Gossip routing: trade-only sessions, the fan-out limit, batching, reach.

Virtual time (``autojump_clock``): a flush interval passes instantly.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, link

from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.agent import Agent, SlotPlan
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import Reason
from protocol.trading import (
    GOSSIP_ALL,
    GOSSIP_NONE,
    GOSSIP_SOME,
    GossipBatch,
    GossipControl,
    OrderGossip,
)
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


@dataclasses.dataclass
class Trader:
    node: Node
    market: Market


Make = Callable[..., Awaitable[Trader]]


@pytest.fixture
def make_trader(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery) -> Make:
    async def factory(member_id: str, **rules: Any) -> Trader:
        node = await make_node(member_id)
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0, **rules))
        return Trader(node, market)

    return factory


async def quiet(seconds: float = 10.0) -> None:
    """Let gossip and its flushes run out (virtual time)."""
    await trio.sleep(seconds)


def gossip_in(conn: PeerConnection, seen: list[tuple[PeerConnection, Any]]) -> list[Any]:
    return [m for c, m in seen if c is conn]


def spy(trader: Trader) -> list[tuple[PeerConnection, Any]]:
    """Record every order gossip and batch the trader's node receives, with its session."""
    seen: list[tuple[PeerConnection, Any]] = []
    node = trader.node
    for msg_type in (OrderGossip, GossipBatch):
        handler = node.handlers[msg_type]

        async def wrapped(conn: PeerConnection, msg: Any, handler: Any = handler) -> None:
            seen.append((conn, msg))
            await handler(conn, msg)

        node.handlers[msg_type] = wrapped  # replace, on purpose
    return seen


async def test_trade_only_session_carries_no_gossip(autojump_clock: Any, make_trader: Make) -> None:
    alice, bob, carol = [await make_trader(n) for n in ("alice", "bob", "carol")]
    await link(alice.node, bob.node)
    await link(carol.node, bob.node)
    seen_alice, seen_carol = spy(alice), spy(carol)
    # carol dials alice only to trade
    await carol.market.dial_for_trade("alice", lambda m: link(carol.node, alice.node))
    await quiet()
    c2a, a2c = carol.node.sessions["alice"], alice.node.sessions["carol"]
    assert c2a in carol.node.gossip_off and a2c in alice.node.gossip_off
    assert alice.market.gossip.peer_mode[a2c] == GOSSIP_NONE
    assert alice.node.counters["orders_requests_ignored"] == 0  # carol sent none
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    other = await carol.market.post("sell", SLOT_START, 500, 85_000)
    await quiet()
    # Both orders still spread, through bob; nothing crossed the trade-only session.
    assert order.order_id in carol.market.book and other.order_id in alice.market.book
    assert gossip_in(c2a, seen_carol) == [] and gossip_in(a2c, seen_alice) == []
    # ...and the session still trades.
    receipt = await carol.market.take(order.order_id, 400)
    assert receipt.terms.buyer == "carol"


async def test_agent_dials_owners_trade_only(autojump_clock: Any, make_trader: Make) -> None:
    alice, carol = await make_trader("alice"), await make_trader("carol")

    class Nothing:
        def net_wh(self, slot_start: int, slot_len: int) -> int:
            return 0

    agent = Agent(carol.market, Nothing(), dial=lambda m: link(carol.node, alice.node))
    assert await agent._ensure_session("alice", SlotPlan())
    await quiet(1)
    assert carol.node.sessions["alice"] in carol.node.gossip_off
    assert alice.node.sessions["carol"] in alice.node.gossip_off


async def test_gossip_sessions_speak_control_and_batch(autojump_clock: Any, make_trader: Make) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(alice.node, bob.node)
    seen = spy(bob)
    await quiet(1)
    a2b = alice.node.sessions["bob"]
    assert alice.market.gossip.peer_mode[a2b] == GOSSIP_ALL  # bob answered alice's control
    orders = [await alice.market.post("sell", SLOT_START, 100 + i, 80_000) for i in range(40)]
    await quiet()
    assert all(o.order_id in bob.market.book for o in orders)
    frames = gossip_in(bob.node.sessions["alice"], seen)
    # What was posted before the first flush goes out at once; the rest,
    # posted while it was on its way, waits for the interval as one batch.
    def count(frame: Any) -> int:
        return len(frame.orders) if isinstance(frame, GossipBatch) else 1

    assert len(frames) == 2 and isinstance(frames[1], GossipBatch)
    assert sum(count(f) for f in frames) == 40 and count(frames[1]) > count(frames[0])
    # and the cancels of a sell-out travel batched too
    for o in orders[:5]:
        await alice.market.cancel(o.order_id)
    await quiet()
    assert all(o.order_id not in bob.market.book for o in orders[:5])


async def test_fan_out_is_limited_among_well_connected_nodes(autojump_clock: Any, make_trader: Make) -> None:
    degree = 2
    traders = [await make_trader(f"m{i}", gossip_degree=degree) for i in range(7)]
    for i, a in enumerate(traders):
        for b in traders[i + 1 :]:
            await link(a.node, b.node)
    await quiet(1)
    # Everyone has 6 gossip sessions > degree, so everyone told everyone SOME.
    for t in traders:
        assert set(t.market.gossip.peer_mode.values()) == {GOSSIP_SOME}
    seen = [spy(t) for t in traders]
    order = await traders[0].market.post("sell", SLOT_START, 1000, 80_000)
    await quiet()
    received = sum(len(s) for s in seen)
    # Flooding would cost 6 + 6 * 5 = 36 frames; each node forwards to at most `degree`.
    assert received <= degree * len(traders)
    owner_sent = [c for c, _ in seen[1] + seen[2] + seen[3] + seen[4] + seen[5] + seen[6]
                  if c.member_id == "m0"]
    assert len(owner_sent) == degree
    assert sum(order.order_id in t.market.book for t in traders) >= 2


async def test_leaf_of_a_sampling_hub_sees_every_order(autojump_clock: Any, make_trader: Make) -> None:
    # A hub with more sessions than its degree, whose peers are well connected
    # too, samples them; but the leaf (one session, dialled BY the hub) says
    # ALL, so it gets every item.
    degree = 2
    hub = await make_trader("hub", gossip_degree=degree)
    ring = [await make_trader(f"r{i}", gossip_degree=degree) for i in range(5)]
    leaf = await make_trader("leaf", gossip_degree=degree)
    for i, r in enumerate(ring):
        await link(hub.node, r.node)
        await link(r.node, ring[(i + 1) % len(ring)].node)
        await link(r.node, ring[(i + 2) % len(ring)].node)
    await link(hub.node, leaf.node)
    await quiet(1)
    h2l = hub.node.sessions["leaf"]
    assert hub.market.gossip.peer_mode[h2l] == GOSSIP_ALL
    assert {hub.market.gossip.peer_mode[hub.node.sessions[r.node.member_id]] for r in ring} == {GOSSIP_SOME}
    orders = []
    for k in range(12):
        orders.append(await ring[k % len(ring)].market.post("sell", SLOT_START, 100 + k, 80_000))
    await quiet()
    # With degree 2 the hub itself is only sampled by its ring (it may miss
    # some); whatever reaches it reaches the leaf.
    at_hub = [o for o in orders if o.order_id in hub.market.book]
    assert at_hub and all(o.order_id in leaf.market.book for o in at_hub)
    assert h2l in hub.market.gossip.targets(b"o" + b"x" * 16, None, "r0")


async def test_chain_reaches_everyone(autojump_clock: Any, make_trader: Make) -> None:
    chain = [await make_trader(f"c{i}") for i in range(7)]
    for a, b in itertools.pairwise(chain):
        await link(a.node, b.node)
    order = await chain[0].market.post("sell", SLOT_START, 1000, 80_000)
    await quiet()
    assert all(order.order_id in t.market.book for t in chain)
    await chain[0].market.cancel(order.order_id)
    await quiet()
    assert all(order.order_id not in t.market.book for t in chain)
    assert all(order.order_id in t.market.cancelled for t in chain)


async def test_peer_that_refuses_gossip_control_is_remembered(autojump_clock: Any, make_trader: Make) -> None:
    # An older node closes the session with INVALID_MESSAGE on an unknown type.
    alice, bob = await make_trader("alice"), await make_trader("bob")

    async def refuse(conn: PeerConnection, msg: GossipControl) -> None:
        await conn.close(Reason.INVALID_MESSAGE, "unknown message type 39")

    bob.node.handlers[GossipControl] = refuse  # replace the router's handler
    await link(alice.node, bob.node)
    await quiet(1)
    assert "bob" in alice.market.gossip.legacy
    await link(alice.node, bob.node)  # the next session: no GossipControl, gossip as before
    await quiet(1)
    assert alice.node.sessions["bob"] not in alice.market.gossip.sent_mode
    order = await alice.market.post("sell", SLOT_START, 1000, 80_000)
    await quiet()
    assert order.order_id in bob.market.book
