"""Policing under attack: feedback, drops, bans, fair share, pre-auth caps."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from p2pd_test_helpers import eventually, link

from p2pd.errors import PeerGone
from p2pd.net.node import Node, NodeLimits
from p2pd.net.peer import PeerConnection
from p2pd.net.policing import Policer, PolicingConfig, attach_policer, host_of
from protocol import (
    MESSAGE_TYPES,
    CongestionFeedback,
    FeedbackEcho,
    Message,
    NoiseHandshake,
    Reason,
    Timeouts,
    frame,
    refusal_frame,
    register,
)
from protocol.schema import U32, Int, f

# --- test-only traffic (type codes >= 200 are never used on the wire) ---------


@dataclass(frozen=True)
class _Gossip(Message):
    TYPE: ClassVar[int] = 200
    CATEGORY: ClassVar[str] = "gossip"
    seq: int = f(Int(0, U32))


@dataclass(frozen=True)
class _Trade(Message):
    TYPE: ClassVar[int] = 201
    CATEGORY: ClassVar[str] = "trade"
    seq: int = f(Int(0, U32))


# Guard: importlib mode may import this module twice in one process.
Gossip: type[Message] = MESSAGE_TYPES.get(200) or register(_Gossip)
Trade: type[Message] = MESSAGE_TYPES.get(201) or register(_Trade)

STRICT = PolicingConfig(gossip_rate=10, trade_rate=10, burst_seconds=1.0, grace=0.5,
                        max_excess=20, feedback_hold=5.0, ban_base=30, ban_max=100)


def count_into(node: Node, counts: Counter[str], *types: type[Message]) -> None:
    async def handler(conn: PeerConnection, msg: Any) -> None:
        counts[conn.member_id] += 1

    for t in types:
        node.handle(t, handler)


async def send_at(conn: PeerConnection, rate: float, seconds: float, msg_type: type[Message] = Gossip) -> int:
    """Send raw (unpaced) at ``rate`` for ``seconds`` of mock time; stop if the peer goes."""
    sent = 0
    for i in range(int(rate * seconds)):
        try:
            await conn.send(msg_type(i))  # type: ignore[call-arg]
        except PeerGone:
            break
        sent += 1
        await trio.sleep(1 / rate)  # mock time passes between sends
    return sent


async def test_flooder_gets_feedback_then_drops_then_ban_while_honest_keeps_rate(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    policer = attach_policer(hub, STRICT)
    received: Counter[str] = Counter()
    count_into(hub, received, Gossip)
    mallory: Node = await make_node("mallory")
    alice: Node = await make_node("alice")
    feedback_at: list[float] = []

    async def on_feedback(conn: PeerConnection, msg: Any) -> None:
        feedback_at.append(trio.current_time())  # mallory reads it and ignores it

    mallory.handle(CongestionFeedback, on_feedback)
    flood, _ = await link(mallory, hub)
    honest, _ = await link(alice, hub)
    start = trio.current_time()
    results: dict[str, int] = {}
    async with hub.events.subscribe() as events:
        async with trio.open_nursery() as nursery:
            async def run(name: str, conn: PeerConnection, rate: float) -> None:
                results[name] = await send_at(conn, rate, 10.0)

            nursery.start_soon(run, "mallory", flood, 200.0)  # 20 x its allowance
            nursery.start_soon(run, "alice", honest, 8.0)
        with trio.fail_after(1):
            await flood.finished.wait()
        kinds = []
        for _ in range(256):
            try:
                kinds.append(events.receive_nowait())
            except trio.WouldBlock:
                break
    order = [e.NAME for e in kinds if getattr(e, "member", None) == "mallory"]
    assert order.index("congestion_feedback") < order.index("ban")
    assert feedback_at and feedback_at[0] - start < 0.2  # feedback as soon as it overran
    assert flood.close_reason == Reason.RATE_LIMITED
    assert results["mallory"] < 200 * 10  # cut off long before the end of its run
    assert results["mallory"] / 200 < 3.0  # cut off within 3 s
    assert hub.counters["policed:gossip"] >= STRICT.max_excess
    assert hub.counters["bans"] == 1
    # The honest session kept its full rate the whole time.
    assert received["alice"] == results["alice"] == 80
    assert "alice" in hub.sessions
    # Reconnecting within the ban is refused after authentication.
    # (Not link(): mallory may see the refusal as PeerGone or as a closed session.)
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.0.0.66:1")
    try:
        again = await mallory.connect_stream(client, "hub")
        with trio.fail_after(5):
            await again.finished.wait()
        assert again.close_reason == Reason.BANNED
    except PeerGone:
        pass
    await eventually(lambda: hub.counters["session_refused:BANNED"] == 1)
    assert "mallory" not in hub.sessions
    snap = policer.snapshot()
    assert snap["bans"]["mallory"]["count"] == 1
    assert 0 < snap["bans"]["mallory"]["remaining_s"] <= 30


async def test_honest_sender_obeys_feedback_and_is_never_banned(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    attach_policer(hub, STRICT)
    received: Counter[str] = Counter()
    count_into(hub, received, Gossip)
    alice: Node = await make_node("alice")
    # Alice believes the allowance is 50/s; the hub allows 10/s.
    sender = attach_policer(alice, PolicingConfig(gossip_rate=50))
    conn, _ = await link(alice, hub)
    start = trio.current_time()
    for i in range(400):
        await sender.send(conn, Gossip(i))  # type: ignore[call-arg]
    elapsed = trio.current_time() - start
    await eventually(lambda: sum(received.values()) + hub.counters["policed:gossip"] >= 400)
    assert alice.counters["feedback_received"] >= 1
    assert hub.counters["feedback_acked"] == alice.counters["feedback_received"]
    assert hub.counters["bans"] == 0 and "alice" in hub.sessions
    # Excess only in the moments the pacer probes above the allowance.
    assert hub.counters["policed:gossip"] < 0.05 * 400
    assert received["alice"] / elapsed == pytest.approx(10, rel=0.2)
    assert sender.pacer.rates()["hub"]["gossip"] <= 15


async def test_forged_and_replayed_echoes_are_rejected(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    attach_policer(hub, STRICT)
    mallory: Node = await make_node("mallory")
    got: list[CongestionFeedback] = []

    async def keep(conn: PeerConnection, msg: Any) -> None:
        got.append(msg)

    mallory.handle(CongestionFeedback, keep)
    conn, _ = await link(mallory, hub)
    for i in range(15):  # burst is 10: the 11th message is over the allowance
        await conn.send(Gossip(i))  # type: ignore[call-arg]
    await eventually(lambda: bool(got))
    fb = got[0]
    assert fb.category == "gossip" and fb.rate == 10
    for forged in (dataclasses.replace(FeedbackEcho.of(fb), rate_milli=1_000_000),
                   dataclasses.replace(FeedbackEcho.of(fb), stamp=bytes(32))):
        await conn.send(forged)
    await eventually(lambda: hub.counters["stamp_rejected:forged"] == 2)
    await conn.send(FeedbackEcho.of(fb))
    await eventually(lambda: hub.counters["feedback_acked"] == 1)
    await conn.send(FeedbackEcho.of(fb))  # the same stamp again
    await eventually(lambda: hub.counters["stamp_rejected:replayed"] == 1)
    assert hub.counters["feedback_acked"] == 1


async def test_fair_share_of_capacity_when_loaded(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    # Each member may send 100/s, but the node only processes 20/s in total.
    attach_policer(hub, PolicingConfig(gossip_rate=100, node_capacity=20, max_excess=10**6))
    received: Counter[str] = Counter()
    count_into(hub, received, Gossip)
    greedy: Node = await make_node("greedy")
    modest: Node = await make_node("modest")
    g, _ = await link(greedy, hub)
    m, _ = await link(modest, hub)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_at, g, 80.0, 10.0)
        nursery.start_soon(send_at, m, 5.0, 10.0)
    elapsed = trio.current_time() - start
    await trio.sleep(0.5)  # let the queue drain in mock time
    assert received["modest"] >= 48  # all of its 50, give or take the last in the queue
    assert received["greedy"] <= (20 - 5) * (elapsed + 0.5) + 10
    assert hub.counters["feedback_sent"] >= 1  # the node told the greedy one it is loaded


async def test_one_session_per_member_and_state_survives_reconnect(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    policer = attach_policer(hub, STRICT)
    alice: Node = await make_node("alice")
    first, _ = await link(alice, hub)
    for i in range(10):
        await first.send(Gossip(i))  # type: ignore[call-arg]
    second, _ = await link(alice, hub)
    with trio.fail_after(5):
        await first.finished.wait()
    assert first.close_reason == Reason.DUPLICATE_SESSION
    await eventually(lambda: len(hub.connections) == 1)
    assert list(hub.sessions) == ["alice"] and hub.sessions["alice"].established.is_set()
    await second.send(Gossip(99))  # type: ignore[call-arg]
    # The new session did not get a fresh bucket: this one is over the allowance.
    await eventually(lambda: hub.counters["policed:gossip"] == 1)
    assert policer.snapshot()["members"]["alice"]["dropped"] == 1


async def test_bans_grow_and_unban_lifts_them(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    policer = attach_policer(hub, STRICT)
    mallory: Node = await make_node("mallory")
    durations = []
    for _ in range(2):
        conn, _ = await link(mallory, hub)
        await send_at(conn, 200.0, 10.0)
        assert conn.close_reason == Reason.RATE_LIMITED
        durations.append(policer.snapshot()["bans"]["mallory"]["remaining_s"])
        await trio.sleep(durations[-1] + 1)  # mock time: wait out the ban
    assert durations == [pytest.approx(30, abs=0.1), pytest.approx(60, abs=0.1)]
    conn, _ = await link(mallory, hub)
    await send_at(conn, 200.0, 10.0)
    assert policer.snapshot()["bans"]["mallory"]["count"] == 3
    assert policer.unban("mallory") and not policer.unban("mallory")
    conn, _ = await link(mallory, hub)
    assert "mallory" in hub.sessions


async def test_restored_ban_refuses_the_member_after_a_restart(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    policer = attach_policer(hub, STRICT)
    now = hub.clock.now()
    policer.restore_ban("mallory", now + 120, 2, now)  # as loaded from the store
    policer.restore_ban("stale", now - 1, 1, now)  # an expired one is not restored
    assert set(policer.snapshot()["bans"]) == {"mallory"}
    mallory: Node = await make_node("mallory")
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "mallory")
    try:
        conn = await mallory.connect_stream(client, "hub")
        with trio.fail_after(5):
            await conn.finished.wait()
    except PeerGone:
        pass
    assert "mallory" not in hub.sessions
    assert hub.counters["session_refused:BANNED"] == 1


# --- before authentication ---------------------------------------------------


def test_host_of_keys_on_host_only() -> None:
    assert host_of("10.0.0.1:4000") == "10.0.0.1"
    assert host_of("[2001:db8::1]:4000") == "2001:db8::1"
    assert host_of("memory") == "memory"


async def test_new_connections_per_host_are_rate_limited(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    attach_policer(hub, PolicingConfig(conn_rate_per_host=1, conn_burst_per_host=3))
    clients = []
    for port in range(3):
        client, server = trio.testing.memory_stream_pair()
        hub.nursery.start_soon(hub.accept, server, f"10.0.0.1:{port}")
        clients.append(client)
    await eventually(lambda: len(hub.connections) == 3)
    client, server = trio.testing.memory_stream_pair()
    await hub.accept(server, "10.0.0.1:9")  # another port does not help
    assert hub.counters["refused:RATE_LIMITED"] == 1
    assert await client.receive_some(64) == refusal_frame(Reason.RATE_LIMITED, 1.0)  # §13.7
    assert await client.receive_some(10) == b""
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.0.0.2:9")  # other hosts still get in
    await eventually(lambda: len(hub.connections) == 4)
    await trio.sleep(1.0)  # one new token for 10.0.0.1
    assert hub.admit("10.0.0.1:10") is None
    assert hub.admit("10.0.0.1:11") == Reason.RATE_LIMITED


async def test_concurrent_handshakes_are_capped(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub", limits=NodeLimits(max_connections=10, max_handshakes=2))
    attach_policer(hub, PolicingConfig(conn_burst_per_host=100))
    for port in range(2):
        _, server = trio.testing.memory_stream_pair()
        hub.nursery.start_soon(hub.accept, server, f"10.0.0.{port}:1")
    await eventually(lambda: hub.handshakes_in_progress == 2)
    # A third stranger evicts the oldest stalled handshake: the cap holds,
    # and stalling handshakes cannot lock newcomers out.
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.0.0.9:1")
    await eventually(lambda: hub.counters["handshakes_evicted"] == 1)
    assert hub.handshakes_in_progress <= 2


async def test_stalled_handshake_flood_does_not_lock_out_members(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub", limits=NodeLimits(max_connections=64, max_handshakes=4))
    attach_policer(hub, PolicingConfig(conn_burst_per_host=1000))
    member: Node = await make_node("member")
    stalled = []
    for port in range(4):
        client, server = trio.testing.memory_stream_pair()
        stalled.append(client)
        hub.nursery.start_soon(hub.accept, server, f"10.0.0.66:{port}")
    await eventually(lambda: hub.handshakes_in_progress == 4)
    await link(member, hub)  # the honest member still gets in
    assert "member" in hub.sessions
    assert hub.handshakes_in_progress <= 4


async def test_each_handshake_stage_has_a_deadline(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub", limits=NodeLimits(timeouts=Timeouts(handshake_stage=3.0)))
    attach_policer(hub)
    # Stage 1: nothing at all.
    _, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await hub.accept(server, "10.0.0.1:1")
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    # Stage 2: message 1, then silence instead of message 3.
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.0.0.1:2")
    hs = NoiseHandshake(initiator=True, static_private=bytes(range(32)), community=hub.policy.community)
    await client.send_all(frame(hs.write_message(b"")))
    start = trio.current_time()
    assert len(await client.receive_some(4096)) > 32
    with trio.fail_after(10):
        assert await client.receive_some(4096) == b""
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    assert hub.counters["handshake_failed:TIMEOUT"] == 2 and not hub.connections


@pytest.mark.parametrize("prefix,msg1_first,reason", [
    (b"\x00\x21", False, "FRAME_TOO_LARGE"),  # 33 bytes before msg1: the cap is 32
    (b"\x04\x01", True, "FRAME_TOO_LARGE"),   # 1025 bytes after msg1: the cap is 1024
])
async def test_frame_limit_is_small_until_the_handshake_is_done(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock,
    prefix: bytes, msg1_first: bool, reason: str,
) -> None:
    hub: Node = await make_node("hub")
    attach_policer(hub)
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.0.0.1:1")
    if msg1_first:
        hs = NoiseHandshake(initiator=True, static_private=bytes(range(32)),
                            community=hub.policy.community)
        await client.send_all(frame(hs.write_message(b"")))
        await client.receive_some(4096)
    start = trio.current_time()
    await client.send_all(prefix)  # only the prefix: rejected before any body byte
    with trio.fail_after(1):
        assert await client.receive_some(4096) == b""
    assert trio.current_time() - start < 0.01
    assert hub.counters[f"handshake_failed:{reason}"] == 1


def test_policing_config_defaults_are_sane() -> None:
    cfg = PolicingConfig()
    assert cfg.rate_for("gossip") == 50 and cfg.rate_for("trade") == 20
    assert cfg.rate_for("control") == 10 and cfg.ban_base < cfg.ban_max
    assert isinstance(Policer, type)


# --- batches and snapshots cost what they carry --------------------------------


def test_token_bucket_admits_a_batch_when_full_then_is_in_debt() -> None:
    from protocol import TokenBucket

    bucket = TokenBucket.full(10.0, 10.0, 0.0)
    assert bucket.take(0.0, 100)  # a full bucket lets one oversized batch through ...
    assert not bucket.take(5.0)  # ... and the sender then pays it off (debt of 90)
    assert bucket.take(9.1)


async def test_a_gossip_batch_counts_every_item_against_the_allowance(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    from protocol.trading import GossipBatch, Order, OrderGossip

    hub: Node = await make_node("hub")
    attach_policer(hub, PolicingConfig(gossip_rate=10, burst_seconds=1.0, grace=60.0))
    mallory: Node = await make_node("mallory")
    conn, _ = await link(mallory, hub)
    slot = (int(hub.clock.now()) // 900 + 2) * 900
    order = Order.create(mallory.identity.keys.signing, order_id=b"o" * 16, member_id="mallory",
                         side="sell", slot_start=slot, slot_len=900, wh=10, price=50_000,
                         expiry=slot - 300)
    item = OrderGossip(order, mallory.identity.credential, 1)
    for _ in range(3):  # three batches of 100 items, back to back
        await conn.send(GossipBatch((item,) * 100, ()))
    await eventually(lambda: hub.counters["policed:gossip"] >= 2)
    # The first batch used the full bucket (and left a debt of 90 items):
    # the next two are dropped, as 200 single orders would have been.
    assert hub.counters["policed:gossip"] == 2


async def test_unsolicited_snapshots_are_dropped(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    from p2pd.roles.receipt_writer import ReceiptWriter
    from p2pd.roles.trading import Market
    from protocol.trading import OrdersSnapshot
    from store import MemoryRepository

    hub: Node = await make_node("hub")
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await hub.nursery.start(writer.run)
    Market(hub, repo, writer)
    peer: Node = await make_node("peer")
    conn, _ = await link(peer, hub)
    # hub asked peer for its orders when the session opened: 32 snapshots are
    # accepted for that request, the rest are dropped unread.
    for _ in range(40):
        await conn.send(OrdersSnapshot(()))
    await eventually(lambda: hub.counters["snapshots_unsolicited"] >= 8)
    assert hub.counters["snapshots_unsolicited"] == 8
