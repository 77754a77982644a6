"""Denial-of-service attacks for the simulation: handshake flood and message flood."""

from __future__ import annotations

import os
from typing import Any

import trio

from p2pd.errors import P2pdError, PeerGone
from p2pd.sim.attack_kit import add_attacker, connect, far_slot, session_at_target, wait
from p2pd.sim.community import SimCommunity
from protocol import OrderGossip


async def handshake_flood(com: SimCommunity) -> dict[str, Any]:
    """A stranger opens connections and stalls their handshakes against one node: honest dials refused."""
    target = com.nodes[0]
    probe = await add_attacker(com, com.identity("x-probe"))
    opened = 0
    trades_before = sum(s.node.counters["trades_sold"] + s.node.counters["trades_bought"] for s in com.nodes)
    duration = 2.0
    stalled = 3 * target.node.limits.max_handshakes

    async def staller() -> None:
        nonlocal opened
        while True:
            try:
                stream = await com.open_stream(target, f"mem:stranger:{os.urandom(3).hex()}")
            except OSError:
                await trio.sleep(0.05)
                continue
            opened += 1
            try:
                while await stream.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()
            await trio.sleep(0.01)

    probes = denied = 0
    async with trio.open_nursery() as nursery:
        for _ in range(stalled):
            nursery.start_soon(staller)
        await trio.sleep(0.3)
        with trio.move_on_after(duration):
            while True:
                probes += 1
                # A new member, from one address, that waits as a refusal
                # notice tells it to (as p2pd.net.discovery does).
                refusal: list[PeerGone] = []
                if not await session_at_target(com, probe, target, refusal, host="mem-x-probe"):
                    denied += 1
                for conn in list(probe.node.sessions.values()):
                    await conn.close()
                wait = refusal[0].retry_after if refusal and refusal[0].retry_after else 0.0
                await trio.sleep(max(0.2, wait))
        nursery.cancel_scope.cancel()
    trades_after = sum(s.node.counters["trades_sold"] + s.node.counters["trades_bought"] for s in com.nodes)
    return {"attempts": opened, "successes": denied, "honest_dials": probes,
            "honest_trades_during": trades_after - trades_before,
            "target_sessions": len(target.node.sessions),
            "note": "success = an honest dial to the flooded node refused"}


async def flood(com: SimCommunity) -> dict[str, Any]:
    """An authenticated member sends over its allowance: messages delivered beyond it; banned?"""
    if not com.policers:
        return {"unavailable": "p2pd.net.policing is not available or policing is off",
                "attempts": 0, "successes": 0}
    target = com.nodes[0]
    mallory = await add_attacker(com, com.identity("x-flood"))
    await connect(com, mallory, target)
    policer = next(p for p in com.policers if p.node is target.node)
    own = await mallory.market.post("sell", far_slot(com), 100, 93_000)
    msg = OrderGossip(own, mallory.identity.credential, 0)
    # Count only what the flood got through: the session's own messages
    # before it (OrdersRequest, the order) are not part of the allowance.
    await wait(lambda: own.order_id in target.market.book)
    before = policer.members.get(mallory.member_id)
    accepted_before = before.accepted if before is not None else 0
    sent, t0 = 0, trio.current_time()
    with trio.move_on_after(3.0):
        while sent < 200_000:
            try:
                await mallory.node.send_to(target.member_id, msg)
            except P2pdError:
                break
            sent += 1
            if sent % 64 == 0:
                await trio.lowlevel.checkpoint()
    elapsed = trio.current_time() - t0
    await trio.sleep(0.2)
    state = policer.members.get(mallory.member_id)
    accepted = (state.accepted if state is not None else 0) - accepted_before
    cfg = policer.config
    allowance = int(cfg.gossip_rate * elapsed + max(1.0, cfg.gossip_rate * cfg.burst_seconds))
    banned = mallory.member_id in policer.bans
    back = await session_at_target(com, mallory, target) if banned else None
    return {"attempts": sent, "successes": max(0, accepted - allowance), "delivered": accepted,
            "allowance": allowance, "banned": banned, "reconnected_while_banned": back,
            "seconds": round(elapsed, 2)}
