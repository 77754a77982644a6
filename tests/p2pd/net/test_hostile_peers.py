"""Hostile members and strangers, round two (issue 13): session messages are
policed, refusals before authentication carry their reason, a handshake flood
does not lock known members out, and logs do not amplify attacks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import Community, link, node_identity

from p2pd.errors import PeerGone
from p2pd.net.discovery import Backoff, Discovery
from p2pd.net.listener import dial
from p2pd.net.node import Node, NodeLimits
from p2pd.net.peer import PeerConnection
from p2pd.net.policing import PolicingConfig, attach_policer
from protocol import NoiseHandshake, Ping, Pong, Reason, Timeouts, frame, refusal_frame

HERE = Path(__file__).resolve().parent

# --- 1. Ping, Pong, Rekey and Close are policed -------------------------------------


async def test_a_ping_flood_is_policed_like_any_other_message(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 13: about 2,350 Pings/s for 8.5 s from one member were all
    # answered (the session replied unseen): no feedback, no ban, no count.
    hub: Node = await make_node("hub")
    policer = attach_policer(hub)  # the defaults: control 10/s, burst 2 s
    mallory: Node = await make_node("mallory")
    flood, at_hub = await link(mallory, hub)
    assert at_hub is not None
    out_before = at_hub.stats.messages_out
    sent = 0
    with trio.move_on_after(8.5):
        for i in range(int(2350 * 8.5)):
            try:
                await flood.send(Ping(i))
            except PeerGone:
                break
            sent += 1
            await trio.sleep(1 / 2350)
    with trio.fail_after(5):
        await flood.finished.wait()
    assert flood.close_reason == Reason.RATE_LIMITED
    assert sent < 2350 * 3  # cut off within a few seconds, not 8.5
    assert hub.counters["bans"] == 1 and "mallory" in policer.snapshot()["bans"]
    assert hub.counters["feedback_sent"] >= 1
    member = policer.snapshot()["members"]["mallory"]  # what limits.show reports
    assert member["dropped"] >= policer.config.max_excess
    assert member["accepted"] <= 10 * 2 + 10 * 4  # the burst plus the rate, not thousands
    # Only admitted Pings were answered (a Pong each, plus the feedback).
    pongs = at_hub.stats.messages_out - out_before - hub.counters["feedback_sent"]
    assert 0 < pongs <= member["accepted"]


async def test_pong_rekey_and_close_are_charged_to_control(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub")
    policer = attach_policer(hub)
    # Mallory rekeys after every message it sends: each one brings a Rekey.
    mallory: Node = await make_node("mallory", limits=NodeLimits(timeouts=Timeouts(rekey_messages=1)))
    conn, at_hub = await link(mallory, hub)
    assert at_hub is not None
    for i in range(3):
        await conn.send(Pong(i))
    await conn.close()
    with trio.fail_after(5):
        await at_hub.finished.wait()
    # 3 Pongs, 3 Rekeys and the Close: all seen, all charged to control.
    assert policer.snapshot()["members"]["mallory"]["accepted"] == 7
    assert policer.members["mallory"].buckets["control"].tokens < 20 - 6


# --- 2. A handshake flood does not lock known members out ------------------------------


async def test_known_hosts_get_in_while_strangers_hold_every_handshake_slot(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    hub: Node = await make_node("hub", limits=NodeLimits(max_connections=64, max_handshakes=4))
    policer = attach_policer(hub, PolicingConfig(conn_burst_per_host=100, stranger_rate=2,
                                                 stranger_burst=6))
    hub.note_known_host("10.1.1.1")  # e.g. a member's announced address
    stalled = []
    for k in range(6):  # strangers spend the whole budget; four hold the slots
        client, server = trio.testing.memory_stream_pair()
        stalled.append(client)
        hub.nursery.start_soon(hub.accept, server, f"10.66.0.{k}:1")
    await trio.testing.wait_all_tasks_blocked()
    assert hub.handshakes_in_progress == 4 and hub.counters["handshakes_evicted"] == 2
    # A known member's handshake in progress: strangers cannot evict it ...
    hs = NoiseHandshake(initiator=True, static_private=bytes(range(32)), community=hub.policy.community)
    member_client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "10.1.1.1:5")
    await member_client.send_all(frame(hs.write_message(b"")))
    await trio.testing.wait_all_tasks_blocked()
    known = [c for c in hub.connections if c.known]
    assert len(known) == 1
    # ... however many arrive: over the budget they are refused before any
    # handshake work (under load), within it they evict each other only.
    for k in range(20):
        client, server = trio.testing.memory_stream_pair()
        hub.nursery.start_soon(hub.accept, server, f"10.67.0.{k}:1")
        await trio.sleep(0.1)
    assert known[0] in hub.connections and not known[0].finished.is_set()
    assert hub.counters["stranger_budget_refused"] > 0 and policer.snapshot()["under_load"]
    assert hub.handshakes_in_progress <= 4
    # A known host from a completed session also gets in under load.
    alice: Node = await make_node("alice")
    await link(alice, hub)  # from "memory"
    assert "alice" in hub.sessions and "memory" in hub.known_hosts
    client, server = trio.testing.memory_stream_pair()
    hub.nursery.start_soon(hub.accept, server, "memory")
    await trio.testing.wait_all_tasks_blocked()
    assert hub.counters["refused:TOO_MANY_CONNECTIONS"] == hub.counters["stranger_budget_refused"]


async def test_a_stranger_that_waits_as_told_gets_in_during_a_blind_flood(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    # The retry step: under load a stranger is refused with "retry after
    # 1 s"; coming back no earlier than that, it spends a budget of its own,
    # which a flood that ignores the notices never reaches.
    hub: Node = await make_node("hub", limits=NodeLimits(max_connections=10_000, max_handshakes=8))
    attach_policer(hub, PolicingConfig(stranger_rate=5, stranger_burst=5))

    async def blind_flood() -> None:
        for k in range(4000):  # 200/s for 20 s, from 50 hosts, never waiting
            _, server = trio.testing.memory_stream_pair()
            hub.nursery.start_soon(hub.accept, server, f"10.66.0.{k % 50}:{k}")
            await trio.sleep(0.005)

    async def knock(address: str) -> bytes:
        client, server = trio.testing.memory_stream_pair()
        hub.nursery.start_soon(hub.accept, server, address)
        with trio.move_on_after(0.5):
            return bytes(await client.receive_some(64))
        return b""  # admitted: the hub waits for our message 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blind_flood)
        await trio.sleep(2.0)
        refused = refusal_frame(Reason.TOO_MANY_CONNECTIONS, 1.0)
        assert await knock("10.7.7.7:1") == refused  # the budget is the flood's
        assert await knock("10.7.7.7:2") == refused  # too early: 0.5 s after
        await trio.sleep(1.0)
        assert await knock("10.7.7.7:3") == b""  # as told: in
        nursery.cancel_scope.cancel()
    assert hub.counters["stranger_retry_admitted"] == 1  # the flood never came back as told


# --- 3. A refused dialler learns why, and when to come back -------------------------


async def test_the_dialler_reports_the_refusal_and_waits_as_told(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub: Node = await make_node("hub")
    attach_policer(hub, PolicingConfig(conn_rate_per_host=1 / 30, conn_burst_per_host=1))
    alice: Node = await make_node("alice")
    attempts: list[float] = []

    async def connect(host: str, port: int) -> PeerConnection:
        attempts.append(trio.current_time())
        client, server = trio.testing.memory_stream_pair()
        hub.nursery.start_soon(hub.accept, server, f"{host}:{port}")
        return await alice.connect_stream(client, f"{host}:{port}")

    # The first session uses alice's burst; after it ends, the hub refuses
    # her for 30 s. The back-off alone would retry after 1 s, 2 s, 4 s ...
    disc = Discovery(alice, static_peers=[("10.0.0.7", 7400)], connect=connect,
                     backoff=Backoff(initial=1.0, maximum=300.0, jitter=0.0, stable_after=600))
    await nursery.start(disc.run)
    await trio.sleep(1)
    assert "hub" in alice.sessions
    await alice.sessions["hub"].close()
    await trio.sleep(5)
    target = disc.status()["targets"][0]
    assert "RATE_LIMITED" in target["last_error"]  # what p2pctl peers shows
    assert alice.counters["dial_failed:RATE_LIMITED"] == 1
    assert target["retry_in_s"] > 20  # the notice said 30 s, not the back-off's 1 s
    await trio.sleep(30)
    assert len(attempts) == 3 and "hub" in alice.sessions


# --- 4. Logs do not amplify attacks ---------------------------------------------------


async def test_ten_thousand_failed_handshakes_log_a_bounded_number_of_lines(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 13: every admitted pre-auth connection wrote 2-3 log lines
    # (93,800 lines, 7.7 MB in 2.5 minutes of churn).
    hub: Node = await make_node("hub")
    attach_policer(hub, PolicingConfig(conn_burst_per_host=10, conn_rate_per_host=0.001))
    caplog.set_level(logging.INFO, logger="p2pd")
    for i in range(10_000):
        client, server = trio.testing.memory_stream_pair()
        await client.send_all(b"\x00\x00")  # a zero-length frame: PROTOCOL_ERROR at once
        # Half from 5,000 hosts (each admitted, each fails); half from one
        # host, refused by its connection rate after its burst of 10.
        host = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" if i % 2 else "10.255.255.1"
        await hub.accept(server, f"{host}:{1024 + i % 60000}")
        if i % 500 == 0:
            await trio.sleep(7.0)  # 140 s in all: a few sampling intervals pass
    failed = sum(v for k, v in hub.counters.items() if k.startswith("handshake_failed:"))
    refused = sum(v for k, v in hub.counters.items() if k.startswith("refused:"))
    assert failed + refused == 10_000  # the counters see every one
    assert hub.counters["refused:RATE_LIMITED"] == 5_000 - 10
    assert hub.counters["refused:TOO_MANY_CONNECTIONS"] > 0  # strangers' budget (§13.7)
    lines = [r.getMessage() for r in caplog.records if r.name == "p2pd"]
    # Three causes (handshake_failed, connection_refused for each reason)
    # over 140 s: the first line of each, then at most one summary per cause
    # and 60 s.
    assert 3 <= len(lines) <= 3 * (1 + 140 // 60), lines
    assert any("repeats=" in line for line in lines)
    assert hub.status()["log"]["suppressed"] >= 10_000 - len(lines)


# --- between processes: a hub in its own process, real loopback TCP ---------------------


class HubProcess:
    """A policed node in a subprocess (peer_processes.py hub), on 127.0.0.1."""

    def __init__(self, community: Community, policing: dict[str, Any],
                 limits: dict[str, Any] | None = None) -> None:
        now = int(time.time())
        ident = community.member("hub", valid_from=now - 3600, valid_until=now + 86400)
        cfg = {"community": community.name, "issuer": community.issuer.public.hex(),
               "identity": [ident.signing.seed().hex(), ident.noise_private.hex(),
                            ident.credential.encode().hex()],
               "policing": policing, "limits": limits or {}}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "peer_processes.py"), "hub"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.flush()
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def status(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("status\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


def real_member(community: Community, name: str, nursery: trio.Nursery) -> Node:
    """A node on the system clock (the hub's credentials check real time)."""
    now = int(time.time())
    ident = community.member(name, valid_from=now - 3600, valid_until=now + 86400)
    return Node(node_identity(ident), community.policy(), nursery)


async def open_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:``port`` from the local address ``source``."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


@pytest.mark.slow
async def test_a_refused_dialler_learns_the_reason_between_processes(nursery: trio.Nursery) -> None:
    # Issue 13: a member refused by the per-host connection rate saw
    # PROTOCOL_ERROR, nothing it could act on.
    community = Community()
    rated, capped = await trio.to_thread.run_sync(lambda: (
        HubProcess(community, {"conn_rate_per_host": 0.1, "conn_burst_per_host": 1}),
        HubProcess(community, {}, {"max_connections": 2})))
    try:
        alice = real_member(community, "alice", nursery)
        first = await dial(alice, "127.0.0.1", rated.port)  # the burst of 1 ...
        with pytest.raises(PeerGone) as refused:
            await dial(alice, "127.0.0.1", rated.port)  # ... is spent: RATE_LIMITED
        assert "RATE_LIMITED" in str(refused.value)  # what p2pctl and the log show
        assert refused.value.reason is Reason.RATE_LIMITED
        assert refused.value.retry_after == pytest.approx(10.0)  # one token at 0.1/s
        await first.close()
        # The connection cap: two strangers hold it (accepted in order), then alice knocks.
        strangers = [await open_from(f"127.0.0.{20 + k}", capped.port) for k in range(2)]
        with pytest.raises(PeerGone) as full:
            await alice.connect_stream(await open_from("127.0.0.30", capped.port), "capped")
        assert full.value.reason is Reason.TOO_MANY_CONNECTIONS
        assert full.value.retry_after == pytest.approx(1.0)
        for s in strangers:
            await s.aclose()
        counts = await trio.to_thread.run_sync(lambda: (rated.status(), capped.status()))
        assert counts[0]["counters"]["refused:RATE_LIMITED"] == 1
        assert counts[1]["counters"]["refused:TOO_MANY_CONNECTIONS"] == 1
    finally:
        await trio.to_thread.run_sync(lambda: (rated.close(), capped.close()))


class AttackerProcess:
    """Connections from ``hosts`` at ``rate``/s for ``seconds``, each a valid
    message 1 and then nothing (peer_processes.py attacker)."""

    def __init__(self, community: str, port: int, hosts: list[str], rate: float,
                 seconds: float) -> None:
        cfg = {"community": community, "port": port, "hosts": hosts, "rate": rate,
               "seconds": seconds, "hold": 2000}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "peer_processes.py"), "attacker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.close()

    def result(self) -> dict[str, Any]:
        """Wait for the end of the flood (it is bounded by ``seconds``)."""
        assert self.proc.stdout is not None
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc.stdout.close()
        return dict(json.loads(out))


@pytest.mark.slow
async def test_a_known_member_gets_in_during_a_handshake_flood(nursery: trio.Nursery) -> None:
    # Issue 13: under a flood of valid message 1s from many addresses, an
    # honest member's new connections failed: the flood's admitted
    # handshakes evicted its handshake, or its connection waited behind
    # thousands in the accept queue. The hub's per-host limit is generous
    # here, so only the strangers' budget and the known-host priority stand
    # between the flood and the handshake slots.
    community = Community()
    hub = await trio.to_thread.run_sync(
        HubProcess, community, {"conn_burst_per_host": 10_000, "conn_rate_per_host": 1000},
        {"max_handshakes": 4})
    attacker: AttackerProcess | None = None
    try:
        alice = real_member(community, "alice", nursery)
        conn = await dial(alice, "127.0.0.1", hub.port)  # now 127.0.0.1 is a known host
        await conn.close()
        hosts = [f"127.0.0.{k}" for k in range(2, 51)]
        attacker = AttackerProcess(community.name, hub.port, hosts, rate=1500, seconds=6)
        await trio.sleep(1.0)  # the flood is on
        took = []
        for _ in range(12):
            start = trio.current_time()
            with trio.move_on_after(5):
                try:
                    conn = await dial(alice, "127.0.0.1", hub.port, connect_timeout=5)
                    took.append(trio.current_time() - start)
                    await conn.close()
                except PeerGone:
                    pass
            await trio.sleep(0.3)
        flood = await trio.to_thread.run_sync(attacker.result)
        attacker = None
        counters = (await trio.to_thread.run_sync(hub.status))["counters"]
        assert flood["attempts"] > 2000  # the flood really ran
        # At most one slow or failed session of twelve (goal: 95 % within 2 s).
        # The hub counts too: an initiator believes it is established once it
        # sent message 3, which the hub may never process (an evicted handshake).
        assert sum(1 for t in took if t <= 2.0) >= 11, (took, counters)
        assert counters["sessions_established"] >= 1 + 11, (took, counters)
        assert counters["stranger_budget_refused"] > 1000
    finally:
        if attacker is not None:
            await trio.to_thread.run_sync(attacker.result)
        await trio.to_thread.run_sync(hub.close)
