from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import Community, eventually, link

from p2pd.errors import PeerGone
from p2pd.net.listener import dial, serve_p2p
from p2pd.net.node import Node, NodeLimits
from protocol import Reason, Timeouts, refusal_frame


async def test_two_nodes_establish_and_see_each_other(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    conn, back = await link(alice, bob)
    assert set(alice.sessions) == {"bob"} and set(bob.sessions) == {"alice"}
    status = alice.status()
    assert status["member_id"] == "alice"
    assert [s["member_id"] for s in status["sessions"]] == ["bob"]


async def test_untrusted_peer_is_refused_and_others_keep_working(
    make_node: Callable[..., Any], community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    bob: Node = await make_node("bob")
    alice: Node = await make_node("alice")
    outsider_community = Community(name=community.name)  # same name, other issuer
    mallory: Node = await make_node("mallory", ident=outsider_community.member("mallory"))
    client, server = trio.testing.memory_stream_pair()
    bob.nursery.start_soon(bob.accept, server, "mallory")
    try:
        # Mallory's side may see the handshake finish (it trusts bob) ...
        conn = await mallory.connect_stream(client, "bob")
        with trio.fail_after(5):
            await conn.finished.wait()
        # ... but bob refuses it inside the session, telling why.
        assert conn.close_reason == Reason.UNTRUSTED_ISSUER
    except PeerGone:
        pass
    assert "mallory" not in bob.sessions and "bob" not in mallory.sessions
    assert bob.counters["handshake_failed:UNTRUSTED_ISSUER"] == 1
    await link(alice, bob)
    assert "alice" in bob.sessions


async def test_second_connection_from_same_member_replaces_first(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    first, _ = await link(alice, bob)
    second, _ = await link(alice, bob)
    with trio.fail_after(5):
        await first.finished.wait()  # type: ignore[attr-defined]
    assert alice.sessions["bob"] is second
    assert first.close_reason == Reason.DUPLICATE_SESSION  # type: ignore[attr-defined]
    assert len(bob.sessions) == 1


async def test_simultaneous_dial_converges_on_one_session(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    await link(alice, bob)
    await link(bob, alice)
    await eventually(lambda: len(alice.connections) == 1 and len(bob.connections) == 1)
    a_conn = alice.sessions["bob"]
    b_conn = bob.sessions["alice"]
    # Both keep the connection that "alice" (the smaller id) initiated.
    assert a_conn.initiator and not b_conn.initiator


async def test_silent_connection_is_cut_at_handshake_deadline(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    bob: Node = await make_node("bob", limits=NodeLimits(timeouts=Timeouts(handshake_stage=5.0)))
    client, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await bob.accept(server, "silent")
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
    assert bob.counters["handshake_failed:TIMEOUT"] == 1
    assert not bob.connections


async def test_peer_stopping_halfway_is_cut(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock, community: Community
) -> None:
    from protocol import NoiseHandshake, frame

    bob: Node = await make_node("bob")
    client, server = trio.testing.memory_stream_pair()
    bob.nursery.start_soon(bob.accept, server, "halfway")
    hs = NoiseHandshake(initiator=True, static_private=bytes(range(32)), community=community.name)
    await client.send_all(frame(hs.write_message(b"")))
    msg2 = await client.receive_some(4096)
    assert len(msg2) > 32  # bob answered message 1 ...
    with trio.fail_after(30):
        assert await client.receive_some(4096) == b""  # ... then hung up on us
    assert bob.counters["handshake_failed:TIMEOUT"] == 1


async def test_idle_established_session_pings_then_times_out(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    limits = NodeLimits(timeouts=Timeouts(ping_interval=10, idle_timeout=30))
    alice: Node = await make_node("alice", limits=limits)
    bob: Node = await make_node("bob", limits=limits)
    conn, _ = await link(alice, bob)
    await trio.sleep(300)  # pings keep a healthy session alive across many intervals
    assert "bob" in alice.sessions and "alice" in bob.sessions


async def test_connection_cap_refuses_extra_strangers(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    bob: Node = await make_node("bob", limits=NodeLimits(max_connections=2, max_handshakes=2))
    streams = []
    for _ in range(2):
        client, server = trio.testing.memory_stream_pair()
        bob.nursery.start_soon(bob.accept, server, "stranger")
        streams.append(client)
    await eventually(lambda: len(bob.connections) >= 2)
    client, server = trio.testing.memory_stream_pair()
    await bob.accept(server, "one-too-many")
    assert bob.counters["refused:TOO_MANY_CONNECTIONS"] == 1
    # The refusal notice (docs/protocol.md §13.7), then EOF.
    assert await client.receive_some(64) == refusal_frame(Reason.TOO_MANY_CONNECTIONS, 1.0)
    assert await client.receive_some(10) == b""


async def test_loopback_tcp_smoke(make_node: Callable[..., Any]) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    listeners = await bob.nursery.start(serve_p2p, bob, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    conn = await dial(alice, "127.0.0.1", port)
    assert conn.peer is not None and conn.peer.member_id == "bob"
    await eventually(lambda: "alice" in bob.sessions)


async def test_fault_in_a_handler_closes_only_that_session(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 17: an unexpected exception while handling one member's input used
    # to escape the session and stop the node, for every member.
    from protocol.trading import OrdersRequest

    bob: Node = await make_node("bob")
    alice: Node = await make_node("alice")
    carol: Node = await make_node("carol")
    served: list[str] = []

    async def handler(conn: Any, msg: OrdersRequest) -> None:
        if conn.member_id == "alice":
            raise ZeroDivisionError("injected fault")
        served.append(conn.member_id)

    bob.handle(OrdersRequest, handler)
    a_conn, _ = await link(alice, bob)
    c_conn, _ = await link(carol, bob)
    request = OrdersRequest()
    await a_conn.send(request)
    with trio.fail_after(5):
        await a_conn.finished.wait()
    assert a_conn.close_reason == Reason.INTERNAL_ERROR  # alice is told, and why
    assert bob.status()["counters"]["internal_errors"] == 1
    assert "alice" not in bob.sessions
    await c_conn.send(request)  # bob goes on serving carol
    await eventually(lambda: served)
    assert served == ["carol"] and "carol" in bob.sessions
