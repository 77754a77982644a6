"""Attacks from the threat list (slides 19-22), run against a live simulated community.

Each attack is measured, not assumed: it really tries, against the same node
code, and reports ``{"attempts": n, "successes": n, ...}``. For the
mitigations to hold, successes are 0, except for ``double_sell``, whose
mitigation is detection: a seller who bypasses its own store *can* sign
receipts for more than its order holds (those are counted as successes), and
every one of them must be ``detected`` by :func:`p2pd.disputes.verify_bundle`.

Attackers run as extra nodes that are not members of the accounts. Orders the
attacks plant are for a slot after the simulated window, so agents never
trade them and settlement never sees them.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pd.disputes import verify_bundle
from p2pd.errors import P2pdError, TradeError
from p2pd.identity import NodeIdentity, NodeKeys
from p2pd.receipt_writer import ReceiptWriter
from p2pd.sim import SimCommunity, SimError, SimNode
from protocol import SigningKey
from protocol.trading import Order, OrderGossip, Take, TradeTerms
from store import Committed, Outcome, ReceiptRecord

AttackFn = Callable[[SimCommunity], Awaitable[dict[str, Any]]]
UNAVAILABLE = {
    "equivocation": "needs brokers (scenario S3), not built yet",
    "broker_crash": "needs brokers (scenario S3), not built yet",
}
PROBE_TIMEOUT = 5.0


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
    for name in names:
        if name in UNAVAILABLE:
            out[name] = {"unavailable": UNAVAILABLE[name], "attempts": 0, "successes": 0}
            continue
        with trio.move_on_after(60) as scope:
            try:
                out[name] = await ATTACKS[name](com)
            except P2pdError as exc:  # the harness could not stage it: say so, never hide it
                out[name] = {"attempts": 0, "successes": 0, "error": f"{type(exc).__name__}: {exc}"}
        if scope.cancelled_caught:
            out[name] = {"attempts": 0, "successes": 0, "error": "attack timed out after 60 s"}


# --- helpers ------------------------------------------------------------------------


def _far_slot(com: SimCommunity) -> int:
    """A slot after the simulated window: nobody's agent trades it, settlement skips it."""
    slot = com.rules.slot_len
    horizon = max(com.cfg.end, com.market_clock.now() + com.cfg.agent.lead_slots * slot)
    return (int(horizon) // slot + 8) * slot


async def _session_at_target(com: SimCommunity, attacker: SimNode, target: SimNode) -> bool:
    """Try to open a session; True if the *target* registered it (the attack's success)."""
    label = f"mem:{attacker.member_id}:{os.urandom(3).hex()}"
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            stream = await com.open_stream(target, label)
            if not com.cfg.memory:
                label = "127.0.0.1:%d" % stream.socket.getsockname()[1]  # type: ignore[attr-defined]
            conn = await attacker.node.connect_stream(stream, label)
            # In XX the initiator finishes first; give the responder its say.
            with trio.move_on_after(0.5):
                await conn.finished.wait()
    except (P2pdError, OSError, trio.TooSlowError):
        pass
    return any(c.address == label and c.peer is not None for c in target.node.sessions.values())


async def _add_attacker(com: SimCommunity, identity: NodeIdentity, *,
                        writer: ReceiptWriter | None = None) -> SimNode:
    return await com.add_node(identity, None, writer=writer, listen=False)


def _targets(com: SimCommunity, k: int, salt: str) -> list[SimNode]:
    rng = random.Random(f"{salt}/{com.cfg.seed}")
    return rng.sample(com.nodes, min(k, len(com.nodes)))


async def _connect(com: SimCommunity, src: SimNode, dst: SimNode, tries: int = 3) -> None:
    for attempt in range(tries):
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                await com.connect(src, dst.member_id)
            return
        except (P2pdError, OSError, trio.TooSlowError):
            if attempt == tries - 1:
                raise
            await trio.sleep(0.5)


async def _wait(predicate: Callable[[], bool], limit: float = 3.0) -> bool:
    with trio.move_on_after(limit):
        while not predicate():
            await trio.sleep(0.01)
        return True
    return False


# --- the attacks ----------------------------------------------------------------------


async def impersonation(com: SimCommunity) -> dict[str, Any]:
    """A stolen credential without its private key: sessions established with it."""
    victim = com.nodes[0]
    stolen = NodeIdentity(NodeKeys.generate(), victim.identity.credential)
    attacker = await _add_attacker(com, stolen)
    targets = [t for t in _targets(com, 6, "impersonation") if t is not victim][:5]
    wins = [await _session_at_target(com, attacker, t) for t in targets]
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
    targets = _targets(com, 3, "sybil")
    for kind, ident in kinds.items():
        attacker = await _add_attacker(com, ident)
        wins = sum([await _session_at_target(com, attacker, t) for t in targets])
        out["attempts"] += len(targets)
        out["successes"] += wins
        out["by_kind"][kind] = wins
    return out


async def _mallory(com: SimCommunity, name: str, peers: int = 3, *,
                   writer: ReceiptWriter | None = None) -> SimNode:
    mallory = await _add_attacker(com, com.identity(name), writer=writer)
    for t in _targets(com, peers, name):
        try:
            await _connect(com, mallory, t)
        except (P2pdError, OSError, trio.TooSlowError):
            pass
    return mallory


def _holders(com: SimCommunity, order_id: bytes, exclude: SimNode) -> int:
    return sum(1 for s in com.nodes + com.extra if s is not exclude and order_id in s.market.book)


async def tamper(com: SimCommunity) -> dict[str, Any]:
    """A member gossips altered or forged orders of another member: orders accepted anywhere."""
    mallory = await _mallory(com, "x-tamper")
    victim = com.nodes[1]
    genuine = await victim.market.post("sell", _far_slot(com), 500, victim.agent.config.ask if victim.agent else 93_000)
    await _wait(lambda: genuine.order_id in mallory.market.book)
    vcred, mcred, key = victim.identity.credential, mallory.identity.credential, mallory.identity.keys.signing
    fresh = lambda: os.urandom(16)  # noqa: E731
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
    by_kind = {k: _holders(com, g.order.order_id, mallory) for k, g in variants.items()}
    # A take with altered terms: a price of 1 for the genuine order.
    take_wins = 0
    try:
        await _connect(com, mallory, victim)
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
    mallory = await _mallory(com, "x-replay")
    victim, honest = com.nodes[1], com.nodes[2 % len(com.nodes)]
    far = _far_slot(com)
    # 1. An order that expires soon, replayed after it expired and was pruned.
    short = await victim.market.post("sell", far, 300, 93_000, expiry=victim.market.now() + 1800)
    await _wait(lambda: short.order_id in mallory.market.book)
    old = OrderGossip(short, victim.identity.credential, 8)
    await com.wait_until(short.expiry + 1)
    for s in com.nodes + com.extra:
        s.market.prune()
    sent = await mallory.node.broadcast(old)
    # 2. A cancelled order replayed.
    gone = await victim.market.post("sell", far, 300, 93_000)
    await _wait(lambda: gone.order_id in mallory.market.book)
    await victim.market.cancel(gone.order_id)
    await _wait(lambda: gone.order_id not in mallory.market.book)
    sent += await mallory.node.broadcast(OrderGossip(gone, victim.identity.credential, 8))
    await trio.sleep(0.5)
    revived = _holders(com, short.order_id, mallory) + _holders(com, gone.order_id, mallory)
    # 3. Takes answered once, sent again with the same trade id (own, then someone else's).
    live = await victim.market.post("sell", far, 1000, 93_000)
    extra_trades = takes = 0
    try:
        await _connect(com, mallory, victim)
        if honest is not victim:
            await _connect(com, honest, victim)
        await _wait(lambda: live.order_id in mallory.market.book and live.order_id in honest.market.book)
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


async def double_sell(com: SimCommunity) -> dict[str, Any]:
    """A seller sells one offer twice: over-sold receipts made, and detected from receipts."""
    takers = _targets(com, 2, "double_sell")
    honest_seller = next(s for s in com.nodes if s not in takers)
    writer = _BypassedWriter()
    seller = await _mallory(com, "x-double", peers=0, writer=writer)

    async def keep_selling(order_id: bytes) -> None:  # a cheat does not withdraw a sold-out offer
        await trio.lowlevel.checkpoint()

    seller.market._retire = keep_selling  # type: ignore[method-assign]
    far, wh = _far_slot(com), 400
    results = {}
    for label, owner in (("bypassed_store", seller), ("honest_store", honest_seller)):
        for t in takers:
            await _connect(com, t, owner)
        order = await owner.market.post("sell", far, wh, 93_000)
        await _wait(lambda: all(order.order_id in t.market.book for t in takers))
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


async def handshake_flood(com: SimCommunity) -> dict[str, Any]:
    """A stranger opens connections and stalls their handshakes against one node: honest dials refused."""
    target = com.nodes[0]
    probe = await _add_attacker(com, com.identity("x-probe"))
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
                if not await _session_at_target(com, probe, target):
                    denied += 1
                for conn in list(probe.node.sessions.values()):
                    await conn.close()
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    trades_after = sum(s.node.counters["trades_sold"] + s.node.counters["trades_bought"] for s in com.nodes)
    return {"attempts": opened, "successes": denied, "honest_dials": probes,
            "honest_trades_during": trades_after - trades_before,
            "target_sessions": len(target.node.sessions),
            "note": "success = an honest dial to the flooded node refused"}


async def flood(com: SimCommunity) -> dict[str, Any]:
    """An authenticated member sends over its allowance: messages delivered beyond it; banned?"""
    if not com.policers:
        return {"unavailable": "p2pd.policing is not available or policing is off",
                "attempts": 0, "successes": 0}
    target = com.nodes[0]
    mallory = await _add_attacker(com, com.identity("x-flood"))
    await _connect(com, mallory, target)
    policer = next(p for p in com.policers if p.node is target.node)
    own = await mallory.market.post("sell", _far_slot(com), 100, 93_000)
    msg = OrderGossip(own, mallory.identity.credential, 0)
    sent, t0 = 0, trio.current_time()
    with trio.move_on_after(3.0):
        while sent < 200_000:
            try:
                await mallory.node.send_to(target.member_id, msg)
            except P2pdError:
                break
            sent += 1
            if sent % 64 == 0:
                await trio.sleep(0)
    elapsed = trio.current_time() - t0
    await trio.sleep(0.2)
    state = policer.members.get(mallory.member_id)
    accepted = state.accepted if state is not None else 0
    cfg = policer.config
    allowance = int(cfg.gossip_rate * elapsed + max(1.0, cfg.gossip_rate * cfg.burst_seconds))
    banned = mallory.member_id in policer.bans
    back = await _session_at_target(com, mallory, target) if banned else None
    return {"attempts": sent, "successes": max(0, accepted - allowance), "delivered": accepted,
            "allowance": allowance, "banned": banned, "reconnected_while_banned": back,
            "seconds": round(elapsed, 2)}


ATTACKS: dict[str, AttackFn] = {
    "impersonation": impersonation,
    "sybil": sybil,
    "tamper": tamper,
    "replay": replay,
    "double_sell": double_sell,
    "handshake_flood": handshake_flood,
    "flood": flood,
}
