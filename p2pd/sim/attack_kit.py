"""Shared helpers of the simulated attacks (p2pd.sim.attacks, p2pd.sim.attacks_dos)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import trio

from p2pd.errors import P2pdError, PeerGone
from p2pd.net.identity import NodeIdentity
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.sim.community import SimCommunity, SimNode
from p2pd.sim.quiet import until

PROBE_TIMEOUT = 5.0


def far_slot(com: SimCommunity) -> int:
    """A slot after the simulated window: nobody's agent trades it, settlement skips it."""
    slot = com.rules.slot_len
    horizon = max(com.cfg.end, com.market_clock.now() + com.cfg.agent.lead_slots * slot)
    return (int(horizon) // slot + 8) * slot


async def session_at_target(com: SimCommunity, attacker: SimNode, target: SimNode,
                            refusal: list[PeerGone] | None = None, *, host: str | None = None) -> bool:
    """Try to open a session; True if the *target* registered it (the attack's success).

    The in-memory address is a new host per call unless ``host`` is given
    (then ``host:random``, one host for every call). A refusal (PeerGone,
    with its reason and retry_after) is appended to ``refusal``.
    """
    label = f"{host}:{os.urandom(3).hex()}" if host else f"mem:{attacker.member_id}:{os.urandom(3).hex()}"
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            stream = await com.open_stream(target, label)
            if not com.cfg.memory:
                label = "127.0.0.1:%d" % stream.socket.getsockname()[1]  # type: ignore[attr-defined]
            conn = await attacker.node.connect_stream(stream, label)
            # In XX the initiator finishes first; give the responder its say.
            with trio.move_on_after(0.5):
                await conn.finished.wait()
    except PeerGone as exc:
        if refusal is not None:
            refusal.append(exc)
    except (P2pdError, OSError, trio.TooSlowError):
        pass
    return any(c.address == label and c.peer is not None for c in target.node.sessions.values())


async def add_attacker(com: SimCommunity, identity: NodeIdentity, *, writer: ReceiptWriter | None = None,
                       withdraw_sold_out: bool = True, listen: bool = False) -> SimNode:
    return await com.add_node(identity, None, writer=writer, listen=listen,
                              withdraw_sold_out=withdraw_sold_out)


def pick_targets(com: SimCommunity, k: int, salt: str) -> list[SimNode]:
    rng = random.Random(f"{salt}/{com.cfg.seed}")
    return rng.sample(com.nodes, min(k, len(com.nodes)))


async def connect(com: SimCommunity, src: SimNode, dst: SimNode, tries: int = 3) -> None:
    for attempt in range(tries):
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                await com.connect(src, dst.member_id)
            return
        except (P2pdError, OSError, trio.TooSlowError):
            if attempt == tries - 1:
                raise
            await trio.sleep(0.5)


async def wait(predicate: Callable[[], bool], limit: float = 3.0) -> bool:
    """True once ``predicate()`` holds (looked at when the community is quiet); False after ``limit`` s."""
    with trio.move_on_after(limit):
        await until(predicate)
        return True
    return False


async def join_member(com: SimCommunity, name: str, peers: int = 3, *,
                   writer: ReceiptWriter | None = None, withdraw_sold_out: bool = True) -> SimNode:
    # A member listens (in TCP mode too): honest members dial it to take its orders.
    mallory = await add_attacker(com, com.identity(name), writer=writer, withdraw_sold_out=withdraw_sold_out,
                                 listen=True)
    for t in pick_targets(com, peers, name):
        try:
            await connect(com, mallory, t)
        except (P2pdError, OSError, trio.TooSlowError):
            pass
    return mallory


def holders(com: SimCommunity, order_id: bytes, exclude: SimNode) -> int:
    return sum(1 for s in com.nodes + com.extra if s is not exclude and order_id in s.market.book)
