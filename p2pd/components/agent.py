"""Daemon component "agent": automatic trading from the member's own meter readings.

Runs only for prosumers with ``[trading] agent = true`` (the default) and a
market (the trading component). Prices come from ``[trading]`` and are
bounded by ``[tariffs]``: never sell below the export tariff, never pay
above the retail one (:func:`p2pd.components.sections.agent_config`).

The forecaster is a :class:`~p2pd.roles.agent.ReadingsForecaster`, seeded from the
readings stored over the last two days and fed every ``meter_reading`` event
after that. The agent offers nothing while the meter is unhealthy (or
absent: then there are no readings and the forecast is empty). Owners
without a session are dialled only if discovery offers ``dial_member``;
otherwise the agent skips their orders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from p2pd import log, storage
from p2pd.components.sections import (
    TradingConfig,
    agent_config,
    extend_status,
    section,
    trading_mode,
)
from p2pd.events import MeterReading
from p2pd.roles.agent import Agent, ReadingsForecaster
from p2pd.roles.trading import Market
from store import ReadingRecord

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

HISTORY_SECONDS = 2 * 86400


async def feed_forecaster(ctx: DaemonContext, forecaster: ReadingsForecaster, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Seed ``forecaster`` from the store, then add every new meter reading."""
    meter_id = ctx.identity.credential.metering_point
    async with ctx.node.events.subscribe() as events:
        # Subscribe first, then read the store: a reading published in
        # between is in both, and ReadingsForecaster.add ignores repeats.
        now = int(forecaster.clock.now())
        stored = await storage.call(ctx.repo, ctx.repo.readings, meter_id,
                                    now - HISTORY_SECONDS, now + 1)
        for rec in stored:
            forecaster.add(rec)
        task_status.started()
        async for event in events:
            if isinstance(event, MeterReading):
                forecaster.add(ReadingRecord(meter_id, event.ts, event.import_wh, event.export_wh,
                                             event.power_w))


class NoMeter:
    """``[meter] driver = "none"``: nothing is measured, so nothing is offered."""

    healthy = False


class AgentComponent:
    name = "agent"

    async def start(self, ctx: DaemonContext) -> None:
        trading: TradingConfig = section(ctx.config, "trading")
        market: Market | None = ctx.services.get("market")
        role = ctx.identity.credential.role
        mode = trading_mode(ctx.config, role)
        if mode in ("delegated", "brokered"):
            # Its representative trades (S2, S3), or the client component runs
            # an agent of its own for what the broker cannot take (S4).
            log.info("agent_off", reason=f"[{'delegation' if mode == 'delegated' else 'broker'}] configured")
            return
        if not trading.agent or market is None or role != "prosumer":
            log.info("agent_off", reason="disabled in [trading]" if not trading.agent
                     else "no market" if market is None else f"role {role}")
            return
        cfg = agent_config(ctx.config, trading)
        forecaster = ReadingsForecaster(market.clock)
        await ctx.nursery.start(feed_forecaster, ctx, forecaster)
        dial = getattr(ctx.discovery, "dial_member", None)
        agent = Agent(market, forecaster, cfg, meter=ctx.meter or NoMeter(), dial=dial)
        ctx.services["agent"] = agent
        await ctx.nursery.start(agent.run)
        extend_status(ctx.control, "agent", lambda: agent_status(agent, forecaster))


def agent_status(agent: Agent, forecaster: ReadingsForecaster) -> dict[str, Any]:
    return {"enabled": agent.config.enabled, "readings": len(forecaster.readings),
            "ask": agent.config.ask, "floor": agent.config.floor,
            "ceiling": agent.config.ceiling, "counters": dict(agent.counters)}


DAEMON_COMPONENT = AgentComponent()
