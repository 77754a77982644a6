"""Hostile members and strangers, round two (issue 13): session messages are
policed, refusals before authentication carry their reason, a handshake flood
does not lock known members out, and logs do not amplify attacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from p2pd_test_helpers import link

from p2pd.errors import PeerGone
from p2pd.net.node import Node, NodeLimits
from p2pd.net.policing import attach_policer
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
    conn, _ = await link(mallory, hub)
    for i in range(3):
        await conn.send(Pong(i))
    await conn.close()
    with trio.fail_after(5):
        while "mallory" in hub.sessions:
            await trio.sleep(0.01)
    # 3 Pongs, 3 Rekeys and the Close: all seen, all charged to control.
    assert policer.snapshot()["members"]["mallory"]["accepted"] == 7
    assert policer.members["mallory"].buckets["control"].tokens < 20 - 6
