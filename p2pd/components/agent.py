"""Daemon component "agent": automatic trading from the member's own meter readings.

Runs only for prosumers with ``[trading] agent = true`` (the default) and a
market (the trading component). Prices come from ``[trading]`` and are
bounded by ``[tariffs]``: never sell below the export tariff, never pay
above the retail one (:func:`p2pd.components.trading.agent_config`). The
agent owns no section of its own. It stays off when the node trades through a
representative or a broker (:func:`p2pd.components.client.trading_mode`).

The forecaster is a :class:`~p2pd.roles.agent.ReadingsForecaster`, seeded from the
readings stored over the last two days and fed every ``meter_reading`` event
after that (p2pd/components/forecasting.py). The agent offers nothing while the meter is unhealthy (or
absent: then there are no readings and the forecast is empty). Owners
without a session are dialled only if discovery offers ``dial_member``;
otherwise the agent's take goes through a peer both share (docs/protocol.md
§12.9), once per slot and owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pd import log
from p2pd.components.client import trading_mode
from p2pd.components.forecasting import NoMeter, feed_forecaster
from p2pd.components.status import extend_status
from p2pd.components.trading import TRADING, agent_config
from p2pd.roles.agent import Agent, ReadingsForecaster
from p2pd.roles.trading import Market

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


class AgentComponent:
    name = "agent"
    section = None  # it reads [trading], which the trading component owns

    async def start(self, ctx: DaemonContext) -> None:
        trading = TRADING.get(ctx.config)
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
