"""Hostile members and strangers, round two (issue 13): session messages are
policed, refusals before authentication carry their reason, a handshake flood
does not lock known members out, and logs do not amplify attacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import link

from p2pd.errors import PeerGone
from p2pd.net.node import Node, NodeLimits
from p2pd.net.policing import PolicingConfig, attach_policer
from protocol import Ping, Pong, Reason, Timeouts

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
    assert refused == 5_000 - 10
    lines = [r.getMessage() for r in caplog.records if r.name == "p2pd"]
    # Two causes (handshake_failed, connection_refused) over 140 s: the
    # first line of each, then at most one summary per cause and 60 s.
    assert 2 <= len(lines) <= 2 * (1 + 140 // 60), lines
    assert any("repeats=" in line for line in lines)
    assert hub.status()["log"]["suppressed"] >= 10_000 - len(lines)
