"""Attacks from the threat list (slides 19-22), run against a live simulated community.

Each attack is measured, not assumed: it really tries, against the same node
code, and reports ``{"attempts": n, "successes": n, ...}``. For the
mitigations to hold, successes are 0, except for ``double_sell``, whose
mitigation is detection: a seller who bypasses its own store *can* sign
receipts for more than its order holds (those are counted as successes), and
every one of them must be ``detected`` by :func:`p2pd.market.disputes.verify_bundle`.

Attackers run as extra nodes that are not members of the accounts. Orders the
attacks plant are for a slot after the simulated window, so agents never
trade them and settlement never sees them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pd.errors import P2pdError, TradeError
from p2pd.market.disputes import verify_bundle
from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.sim.attack_kit import (
    add_attacker,
    connect,
    far_slot,
    holders,
    join_member,
    pick_targets,
    session_at_target,
    wait,
)
from p2pd.sim.attacks_dos import flood, handshake_flood
from p2pd.sim.attacks_roles import broker_crash, equivocation
from p2pd.sim.community import SimCommunity, SimError, SimNode
from protocol import Order, OrderGossip, SigningKey, Take, TradeTerms
from store import Committed, Outcome, ReceiptRecord

AttackFn = Callable[[SimCommunity], Awaitable[dict[str, Any]]]
UNAVAILABLE: dict[str, str] = {}


def describe_attacks() -> str:
    lines = ["attacks (--attack NAME, repeatable):"]
    for name, fn in ATTACKS.items():
        lines.append(f"  {name:16} {(fn.__doc__ or '').strip().splitlines()[0]}")
    for name, why in UNAVAILABLE.items():
        lines.append(f"  {name:16} unavailable: {why}")
    return "\n".join(lines)


def check_attack_names(names: list[str]) -> None:
    """Raise :class:`SimError` for an unknown attack name."""
    for name in names:
        if name not in ATTACKS and name not in UNAVAILABLE:
            raise SimError(f"unknown attack {name!r}; known: {', '.join([*ATTACKS, *UNAVAILABLE])}")


async def run_attacks(com: SimCommunity, names: tuple[str, ...], out: dict[str, dict[str, Any]]) -> None:
    """Run ``names`` one after the other, starting a quarter into the run; fill ``out``."""
    if not names:
        return
    cfg = com.cfg
    await com.wait_until(cfg.start + (cfg.end - cfg.start) / 4)
    # 60 s of wall time, but at least two simulated hours: some attacks wait
    # for an order to expire (half an hour), which in virtual time is real.
    limit = max(60.0, 7200 / com.market_clock.scale)
    for name in names:
        if name in UNAVAILABLE:
            out[name] = {"unavailable": UNAVAILABLE[name], "attempts": 0, "successes": 0}
            continue
        with trio.move_on_after(limit) as scope:
            try:
                out[name] = await ATTACKS[name](com)
            except P2pdError as exc:  # the harness could not stage it: say so, never hide it
                out[name] = {"attempts": 0, "successes": 0, "error": f"{type(exc).__name__}: {exc}"}
        if scope.cancelled_caught:
            out[name] = {"attempts": 0, "successes": 0, "error": f"attack timed out after {limit:g} s"}


# --- the attacks ----------------------------------------------------------------------


async def impersonation(com: SimCommunity) -> dict[str, Any]:
    """A stolen credential without its private key: sessions established with it."""
    victim = com.nodes[0]
    stolen = NodeIdentity(NodeKeys.generate(), victim.identity.credential)
    attacker = await add_attacker(com, stolen)
    targets = [t for t in pick_targets(com, 6, "impersonation") if t is not victim][:5]
    wins = [await session_at_target(com, attacker, t) for t in targets]
    return {"attempts": len(wins), "successes": sum(wins)}


async def sybil(com: SimCommunity) -> dict[str, Any]:
    """Identities without a valid credential (untrusted issuer, forged, expired, foreign): sessions."""
    now = int(com.wall_clock.now())
    rogue = SigningKey.generate()
    kinds: dict[str, NodeIdentity] = {
        "untrusted_issuer": com.identity("x-sybil-1", issuer=rogue),
        "expired": com.identity("x-sybil-2", valid=(now - 10 * 86400, now - 86400)),
        "other_community": com.identity("x-sybil-3", issuer=rogue, community="elsewhere"),
    }
    forged = com.identity("x-sybil-4", issuer=rogue)
    kinds["forged_signature"] = NodeIdentity(
        forged.keys, dataclasses.replace(forged.credential, issuer_pk=com.issuer.public))
    out: dict[str, Any] = {"attempts": 0, "successes": 0, "by_kind": {}}
    targets = pick_targets(com, 3, "sybil")
    for kind, ident in kinds.items():
        attacker = await add_attacker(com, ident)
        wins = sum([await session_at_target(com, attacker, t) for t in targets])
        out["attempts"] += len(targets)
        out["successes"] += wins
        out["by_kind"][kind] = wins
    return out


async def tamper(com: SimCommunity) -> dict[str, Any]:
    """A member gossips altered or forged orders of another member: orders accepted anywhere."""
    mallory = await join_member(com, "x-tamper")
    victim = com.nodes[1]
    genuine = await victim.market.post("sell", far_slot(com), 500, victim.agent.config.ask if victim.agent else 93_000)
    await wait(lambda: genuine.order_id in mallory.market.book)
    vcred, mcred, key = victim.identity.credential, mallory.identity.credential, mallory.identity.keys.signing

    def fresh() -> bytes:
        return os.urandom(16)

    forged = Order.create(key, order_id=fresh(), member_id=victim.member_id, side="sell",
                          slot_start=genuine.slot_start, slot_len=genuine.slot_len, wh=5000,
                          price=1000, expiry=genuine.expiry)
    variants = {
        "altered_wh": OrderGossip(dataclasses.replace(genuine, order_id=fresh(), wh=genuine.wh * 100), vcred, 8),
        "altered_price": OrderGossip(dataclasses.replace(genuine, order_id=fresh(), price=1), vcred, 8),
        "forged_signature": OrderGossip(forged, vcred, 8),
        "wrong_credential": OrderGossip(dataclasses.replace(forged, order_id=fresh()), mcred, 8),
    }
    sent = 0
    for gossip in variants.values():
        sent += await mallory.node.broadcast(gossip)
    await trio.sleep(0.5)
    by_kind = {k: holders(com, g.order.order_id, mallory) for k, g in variants.items()}
    # A take with altered terms: a price of 1 for the genuine order.
    take_wins = 0
    try:
        await connect(com, mallory, victim)
        terms = TradeTerms(fresh(), genuine.order_id, genuine.wh, victim.member_id, mallory.member_id,
                           genuine.slot_start, genuine.slot_len, 100, 1, mallory.market.now())
        await mallory.node.send_to(victim.member_id, Take(terms, terms.sign(key)))
        await trio.sleep(0.3)
        take_wins = sum(1 for r in victim.repo.receipts_for_order(genuine.order_id) if r.price != genuine.price)
    except (P2pdError, OSError, trio.TooSlowError):
        pass
    by_kind["altered_take"] = take_wins
    return {"attempts": sent + 1, "successes": sum(by_kind.values()), "by_kind": by_kind}


async def replay(com: SimCommunity) -> dict[str, Any]:
    """Old orders and already answered Takes sent again: orders revived, extra trades created."""
    mallory = await join_member(com, "x-replay")
    victim, honest = com.nodes[1], com.nodes[2 % len(com.nodes)]
    far = far_slot(com)
    # 1. An order that expires soon, replayed after it expired and was pruned.
    short = await victim.market.post("sell", far, 300, 93_000, expiry=victim.market.now() + 1800)
    await wait(lambda: short.order_id in mallory.market.book)
    old = OrderGossip(short, victim.identity.credential, 8)
    await com.wait_until(short.expiry + 1)
    for s in com.nodes + com.extra:
        s.market.prune()
    sent = await mallory.node.broadcast(old)
    # 2. A cancelled order replayed.
    gone = await victim.market.post("sell", far, 300, 93_000)
    await wait(lambda: gone.order_id in mallory.market.book)
    await victim.market.cancel(gone.order_id)
    await wait(lambda: gone.order_id not in mallory.market.book)
    sent += await mallory.node.broadcast(OrderGossip(gone, victim.identity.credential, 8))
    await trio.sleep(0.5)
    revived = holders(com, short.order_id, mallory) + holders(com, gone.order_id, mallory)
    # 3. Takes answered once, sent again with the same trade id (own, then someone else's).
    live = await victim.market.post("sell", far, 1000, 93_000)
    extra_trades = takes = 0
    try:
        await connect(com, mallory, victim)
        if honest is not victim:
            await connect(com, honest, victim)
        await wait(lambda: live.order_id in mallory.market.book and live.order_id in honest.market.book)
        receipt = await mallory.market.take(live.order_id, 100)
        t = receipt.terms
        for _ in range(5):
            await mallory.node.send_to(victim.member_id, Take(t, receipt.buyer_sig))
            takes += 1
        if honest is not victim:
            other = (await honest.market.take(live.order_id, 100)).terms
            stolen = dataclasses.replace(other, buyer=mallory.member_id)
            await mallory.node.send_to(victim.member_id,
                                       Take(stolen, stolen.sign(mallory.identity.keys.signing)))
            takes += 1
        await trio.sleep(0.5)
        extra_trades = len(victim.repo.receipts_for_order(live.order_id)) - (2 if honest is not victim else 1)
    except (P2pdError, OSError, trio.TooSlowError) as exc:
        return {"attempts": sent + takes, "successes": revived, "error": str(exc)}
    return {"attempts": sent + takes, "successes": revived + max(0, extra_trades),
            "orders_revived": revived, "extra_trades": extra_trades}


class _BypassedWriter(ReceiptWriter):
    """A malicious seller's writer: signs off every receipt, never checks the order."""

    def __init__(self) -> None:
        from store import MemoryRepository

        super().__init__(MemoryRepository())
        self.signed: list[ReceiptRecord] = []

    async def commit(self, record: ReceiptRecord) -> Outcome:
        await trio.lowlevel.checkpoint()
        self.signed.append(record)
        return Committed(record)


def in_every_book(order_id: bytes, nodes: list[SimNode]) -> Callable[[], bool]:
    # A closure over arguments, not over the caller's loop variables (B023).
    return lambda: all(order_id in n.market.book for n in nodes)


async def double_sell(com: SimCommunity) -> dict[str, Any]:
    """A seller sells one offer twice: over-sold receipts made, and detected from receipts."""
    takers = pick_targets(com, 2, "double_sell")
    honest_seller = next(s for s in com.nodes if s not in takers)
    writer = _BypassedWriter()
    # A cheat does not withdraw a sold-out offer, and its store does not refuse overselling.
    seller = await join_member(com, "x-double", peers=0, writer=writer, withdraw_sold_out=False)
    far, wh = far_slot(com), 400
    results = {}
    for label, owner in (("bypassed_store", seller), ("honest_store", honest_seller)):
        for t in takers:
            await connect(com, t, owner)
        order = await owner.market.post("sell", far, wh, 93_000)
        await wait(in_every_book(order.order_id, takers))
        sold = 0
        for t in takers:
            try:
                sold += (await t.market.take(order.order_id, wh)).terms.wh
            except TradeError:
                pass
        results[label] = (order, sold)
    bundle: dict[str, Any] = {"format": "p2pd-receipts/1", "community": com.policy.community,
                              "credentials": [], "receipts": []}
    for s in com.nodes:
        part = s.market.export()
        bundle["credentials"] += part["credentials"]
        bundle["receipts"] += part["receipts"]
    bundle["credentials"].append(seller.identity.credential.encode().hex())
    report = verify_bundle(bundle, {com.issuer.public})
    bad_order, bad_sold = results["bypassed_store"]
    flagged = [p for p in report.problems if p.kind == "double_selling"
               and p.proof.get("order_id") == bad_order.order_id.hex()]
    over = max(0, bad_sold - wh) // wh  # receipts beyond what the order held
    honest_over = max(0, results["honest_store"][1] - wh) // wh
    return {"attempts": len(takers) - 1, "successes": over, "detected": min(over, len(flagged)),
            "undetected": over - min(over, len(flagged)),
            "honest_store": {"attempts": len(takers) - 1, "successes": honest_over},
            "note": "success = over-sold receipt the cheating seller signed; each must be detected"}


ATTACKS: dict[str, AttackFn] = {
    "impersonation": impersonation,
    "sybil": sybil,
    "tamper": tamper,
    "replay": replay,
    "double_sell": double_sell,
    "handshake_flood": handshake_flood,
    "flood": flood,
    "equivocation": equivocation,
    "broker_crash": broker_crash,
}
