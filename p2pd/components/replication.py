"""Daemon component "replication": every node logs, replicates and watches receipt logs.

On every node whatever its role (``[replication] enabled``, the default):
a :class:`~p2pd.roles.replication.Replication` is attached to the node and the
market's writer is wrapped in a :class:`~p2pd.roles.replication.LoggingWriter`, so
each receipt the node commits (S1 by the market; S2-S4 by the
representative, broker and client components, which use
``ctx.services["writer"]``) is appended to the node's hash-chained log, sent
to ``replicas`` other members, and its new head gossiped. Conflicting heads
of another member become an ``equivocation`` event and spread as proof.

The node also follows the logs of the members it trades with, fetching and
verifying what it lacks of them (:class:`~p2pd.roles.log_fetch.LogFetcher`).

Puts ``"replication"`` into ``ctx.services``; adds the control methods
``receipts.log`` and ``receipts.fetch_log`` and a ``replication`` object to
``status``. Owns ``[replication]`` (:data:`REPLICATION`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pd import log
from p2pd.components.status import extend_status
from p2pd.config import Section, Table
from p2pd.control.server import Param
from p2pd.errors import P2pdError, PeerGone
from p2pd.roles.replication import LoggingWriter, Replication

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class ReplicationConfig:
    """``[replication]``: the receipt log, its replicas and head gossip (every node)."""

    enabled: bool = True
    replicas: int = 3


def parse_replication(t: Table) -> ReplicationConfig:
    return ReplicationConfig(enabled=t.boolean("enabled", True), replicas=t.integer("replicas", 3, 0, 16))


REPLICATION = Section("replication", parse_replication)


def log_status(rep: Replication) -> dict[str, Any]:
    """our log's seq and head, replicas held for others, logs followed, equivocators and forks seen"""
    st = rep.status()
    return {**st, "forks": sorted(rep.heads.forks), "members_watched": len(rep.heads.heads),
            "following": rep.fetcher.status()}


async def fetch_log(rep: Replication, member: str) -> dict[str, Any]:
    """follow a member's receipt log and fetch what is missing of it, verified against its signed heads"""
    if member == rep.node.member_id:
        raise P2pdError("that is our own log")
    await rep.fetcher.follow(member)
    added = await rep.fetcher.fetch(member, beyond_known=True)
    followed = rep.fetcher.follows[member]
    return {"member": member, "fetched": added, "verified": followed.seq, "head": followed.head_hash.hex(),
            "latest_head": rep.heads.latest(member), "fork": member in rep.heads.forks,
            "equivocation": member in rep.heads.proofs}


class ReplicationComponent:
    name = "replication"
    section = REPLICATION

    async def start(self, ctx: DaemonContext) -> None:
        cfg = REPLICATION.get(ctx.config)
        if not cfg.enabled:
            log.info("replication_off")
            return
        rep = Replication(ctx.node, replicas=cfg.replicas, repo=ctx.repo)
        await rep.load()
        for conn in list(ctx.node.sessions.values()):  # opened before we hooked on_open
            try:
                await rep._on_open(conn)
            except PeerGone:
                pass
        market = ctx.services.get("market")
        writer = ctx.services.get("writer")
        if writer is not None:
            logging_writer = LoggingWriter(writer, rep)
            ctx.services["writer"] = logging_writer
            if market is not None:
                market.writer = logging_writer
        ctx.services["replication"] = rep
        ctx.control.register("receipts.log", lambda: log_status(rep), summary=log_status.__doc__ or "")
        ctx.control.register("receipts.fetch_log", lambda member: fetch_log(rep, member),
                             {"member": Param(str, max_len=64, help="member id")},
                             summary=fetch_log.__doc__ or "")
        extend_status(ctx.control, "replication",
                      lambda: {"seq": rep.log.chain.seq, "held": rep.held,
                               "equivocators": sorted(rep.heads.proofs), "following": len(rep.fetcher.follows)})


DAEMON_COMPONENT = ReplicationComponent()
