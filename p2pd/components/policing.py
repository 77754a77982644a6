"""Daemon component "policing": inbound limits, congestion feedback and bans.

``attach_policer(node, PolicingConfig(...))`` with the ``[limits]`` section
(p2pd/net/policing.py; docs/operations-limits.md for operators, docs/protocol.md
§13 for the wire). Adds the control methods
``bans.list``, ``bans.clear`` and ``limits.show`` and a ``policing`` object
to ``status``. ``[limits]`` is reloadable: new rates apply to every member's
buckets at once (tokens already saved are capped at the new burst);
``node_capacity`` and ``max_tracked_hosts`` need a restart.

Owns ``[limits]`` (:data:`LIMITS`): every field of
:class:`~p2pd.net.policing.PolicingConfig`, under the same name.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log, storage
from p2pd.components.status import extend_status
from p2pd.config import Config, Section, Table
from p2pd.control.server import Param
from p2pd.events import Banned, Unbanned
from p2pd.net.policing import Policer, PolicingConfig, attach_policer
from store import BanRecord, StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


def parse_limits(t: Table) -> PolicingConfig:
    d = PolicingConfig()
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(PolicingConfig):
        default = getattr(d, f.name)
        if isinstance(default, int):
            kwargs[f.name] = t.integer(f.name, default, 1, 10**9)
        elif f.name == "grace":
            kwargs[f.name] = t.number(f.name, default, 0.0, 3600.0)
        else:
            kwargs[f.name] = t.number(f.name, default, 0.001, 10.0**9)
    cfg = PolicingConfig(**kwargs)
    if cfg.ban_max < cfg.ban_base:
        raise t.error("ban_max", f"must be at least ban_base ({cfg.ban_base:g}), got {cfg.ban_max:g}")
    return cfg


LIMITS = Section("limits", parse_limits)


def apply_limits(policer: Policer, cfg: PolicingConfig) -> None:
    """Switch ``policer`` to ``cfg`` without forgetting members, episodes or bans."""
    policer.config = cfg
    policer.pacer.config = cfg
    for state in policer.members.values():
        for category, bucket in state.buckets.items():
            bucket.rate = cfg.rate_for(category)
            bucket.burst = max(1.0, bucket.rate * cfg.burst_seconds)
            bucket.tokens = min(bucket.tokens, bucket.burst)


def bans_list(policer: Policer) -> dict[str, Any]:
    """active bans, soonest to end first"""
    bans = policer.snapshot()["bans"]
    rows = [{"member_id": m, **b} for m, b in bans.items()]
    return {"bans": sorted(rows, key=lambda r: (r["until"], r["member_id"]))}


def limits_show(policer: Policer) -> dict[str, Any]:
    snap = policer.snapshot()
    return {"limits": dataclasses.asdict(policer.config), "members": snap["members"],
            "pacer": snap["pacer"], "scheduler_waiting": snap["scheduler_waiting"],
            "under_load": snap["under_load"], "counters": snap["counters"]}


async def restore_bans(ctx: DaemonContext, policer: Policer) -> None:
    """Bans outlive restarts: a flooder is not forgiven by a reboot."""
    now = ctx.node.clock.now()
    for rec in await storage.call(ctx.repo, ctx.repo.bans, int(now)):
        policer.restore_ban(rec.member_id, rec.until, rec.level, now)


async def keep_bans(ctx: DaemonContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Write every new ban to the store, and forget cleared ones.

    A ban the store cannot write (a full disk) holds in memory until the
    daemon restarts (counter ``bans_unstored``); the store's health logs the disk.
    """
    async with ctx.node.events.subscribe() as events:
        task_status.started()
        async for event in events:
            try:
                match event:
                    case Banned(member=member, until=until, count=count):
                        rec = BanRecord(member, int(until) + 1, count, "RATE_LIMITED")
                        await storage.call(ctx.repo, ctx.repo.put_ban, rec)
                    case Unbanned(member=member):
                        await storage.call(ctx.repo, ctx.repo.clear_ban, member)
            except StorageUnavailable:
                ctx.node.counters["bans_unstored"] += 1


class PolicingComponent:
    name = "policing"
    section = LIMITS

    async def start(self, ctx: DaemonContext) -> None:
        cfg = LIMITS.get(ctx.config)
        policer = attach_policer(ctx.node, cfg)
        ctx.services["policer"] = policer
        ctx.reloadable.add("sections.limits")

        def reload(new: Config) -> None:
            apply_limits(policer, LIMITS.get(new))

        ctx.on_reload.append(reload)
        await restore_bans(ctx, policer)
        await ctx.nursery.start(keep_bans, ctx)

        def bans_clear(member_id: str) -> dict[str, Any]:
            """lift a member's ban and forget its history"""
            cleared = policer.unban(member_id)
            if cleared:
                log.info("ban_cleared", peer=member_id, by="operator")
            return {"member_id": member_id, "cleared": cleared}

        ctx.control.register("bans.list", lambda: bans_list(policer), summary=bans_list.__doc__ or "")
        ctx.control.register("bans.clear", bans_clear, {"member_id": Param(str, max_len=64)})
        ctx.control.register("limits.show", lambda: limits_show(policer),
                             summary="configured limits, per-member allowances and use, pacer rates")

        def status() -> dict[str, Any]:
            snap = policer.snapshot()
            return {"bans": len(snap["bans"]), "scheduler_waiting": snap["scheduler_waiting"],
                    "under_load": snap["under_load"], "counters": snap["counters"]}

        extend_status(ctx.control, "policing", status)


DAEMON_COMPONENT = PolicingComponent()
