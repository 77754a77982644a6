"""Attacks on the S2-S4 machinery: receipt-log equivocation and a broker crash.

``equivocation``: a member signs two conflicting heads of its receipt log
(one seq, two hashes) and shows one history to half its peers and the other
to the rest. Success = an equivocation nobody detected.

``broker_crash``: in S3/S4 the broker dies in the middle of clearing a slot:
after both sides countersigned the matches, before any final receipt went
out. Success = an acknowledged match lost (countersigned by both parties but
a receipt on neither or only one side). Reports the trades completed after
the crash: all, those over S1 (S4 members' fallback) and those between two
representatives without a broker (S3 representatives' fallback, as in S2).
"""

from __future__ import annotations

from typing import Any

import trio

from p2pd.errors import P2pdError
from p2pd.sim.attack_kit import join_member, wait
from p2pd.sim.community import SimCommunity
from p2pd.sim.scenarios import Scenario, attach_replication, ensure_scenario
from protocol import AgentReceipt, HeadGossip, ReceiptChain
from store import ReceiptRecord

ROUNDS = 3


async def equivocation(com: SimCommunity) -> dict[str, Any]:
    """A member signs two conflicting receipt-log heads: equivocations left undetected."""
    for sim in com.nodes:  # S1 runs have no receipt logs yet: the watchers need them
        attach_replication(com, sim)
    scenario = ensure_scenario(com)
    watchers = [scenario.replication[s.member_id] for s in com.nodes]
    out: dict[str, Any] = {"attempts": 0, "successes": 0, "detected": 0}
    for r in range(ROUNDS):
        mallory = await join_member(com, f"x-equiv-{r}", peers=4)
        attach_replication(com, mallory)
        peers = sorted(mallory.node.sessions)
        if len(peers) < 2:
            raise P2pdError("equivocation needs two peers")
        key, cred = mallory.identity.keys.signing, mallory.identity.credential
        one, two = ReceiptChain(), ReceiptChain()
        one.append(b"history shown to the first half")
        two.append(b"history shown to the second half")
        half = len(peers) // 2
        for i, member in enumerate(peers):
            head = (one if i < half else two).head(key, mallory.member_id)
            try:
                await mallory.node.send_to(member, HeadGossip(head, cred, 3))
            except P2pdError:
                pass
        out["attempts"] += 1
        member = mallory.member_id
        await wait(lambda: any(member in w.heads.proofs for w in watchers), limit=5.0)  # noqa: B023 - awaited here
        knowing = sum(1 for w in watchers if mallory.member_id in w.heads.proofs)
        out["detected"] += 1 if knowing else 0
        out["successes"] += 0 if knowing else 1
        out.setdefault("members_holding_proof", []).append(knowing)
    return out


async def broker_crash(com: SimCommunity) -> dict[str, Any]:
    """The broker dies mid-clearing: acknowledged matches or orders lost (S3/S4)."""
    scenario = com.scenario
    if not isinstance(scenario, Scenario) or scenario.broker is None or scenario.broker_node is None:
        return {"unavailable": "needs a broker (--scenario S3 or S4)", "attempts": 0, "successes": 0}
    broker = scenario.broker.broker
    node = scenario.broker_node.node
    crashed = trio.Event()
    crash_info: dict[str, Any] = {}

    async def crash(receipt: AgentReceipt) -> None:  # both sides signed; die before any delivery
        if not crashed.is_set():
            crash_info["slot"] = receipt.terms.slot_start
            crash_info["time"] = int(com.market_clock.now())
            crashed.set()
            await node.aclose()

    broker.before_delivery.append(crash)
    with trio.move_on_after(max(60.0, 4 * 3600 / com.market_clock.scale)):
        await crashed.wait()
    if not crashed.is_set():
        return {"attempts": 0, "successes": 0, "error": "no slot with a match to crash in"}
    slot = crash_info["slot"]
    signed = [p.terms for p in broker.proposals.values()
              if p.terms.slot_start == slot and len(p.sigs) == 2]
    parties = {s.member_id: s for s in com.nodes + com.extra}
    held = {}

    def settled() -> bool:
        for t in signed:
            held[t.trade_id] = sum(1 for m in {t.seller_agent, t.buyer_agent}
                                   if parties[m].repo.get_receipt(t.trade_id) is not None)
        return all(v == 2 for v in held.values())

    await wait(settled, limit=10.0)
    lost = sum(1 for v in held.values() if v < 2)
    # Wait out the crash slot and the next one: re-offered energy and new slots go over S1.
    await com.wait_until(slot + com.rules.slot_len)
    after = [r for s in com.nodes + com.extra for r in s.repo.receipts()
             if r.created_at >= crash_info["time"] and r.slot_start >= slot]
    trades_after = {r.trade_id for r in after}
    s1_after = {r.trade_id for r in after if r.encoded[:1] != b"\x96"}
    s2_after = {r.trade_id for r in after if _between_agents(r)}
    reoffered = sum(t.fallback.counters["reoffered_direct"] for t in scenario.traders.values())
    released = sum(r.counters["released_wh"] for r in scenario.reps.values())
    return {"attempts": 1, "successes": lost, "crash_slot": slot, "matches_signed": len(signed),
            "finished_directly": len(signed) - lost, "trades_after_crash": len(trades_after),
            "s1_trades_after_crash": len(s1_after), "orders_reoffered_s1": reoffered,
            "s2_trades_after_crash": len(s2_after), "wh_released_from_broker": released,
            "note": "success = a match both sides signed that did not become a receipt on both sides"}


def _between_agents(r: ReceiptRecord) -> bool:
    """An agent receipt of two different agents without a broker (S2, or S3 without it)."""
    if r.encoded[:1] != b"\x96":
        return False
    t = AgentReceipt.decode(r.encoded).terms
    return not t.broker and t.seller_agent != t.buyer_agent
