"""Daemon component "trading": the receipt writer, the market and its control methods.

On start: a :class:`~p2pd.roles.receipt_writer.ReceiptWriter` runs in the daemon's
nursery, a :class:`~p2pd.roles.trading.Market` is built with the rules of
``[community]`` and ``[trading]``, our own live orders come back from the
store (``market.load()``), and expired orders leave the book once per slot.
The member's role comes from its credential: brokers get the book and the
APIs, but the market refuses their orders (BAD_ROLE).

Puts ``"market"`` and ``"writer"`` into ``ctx.services`` and adds a
``market`` object to ``status``.

Owns ``[trading]`` (:data:`TRADING`): the market rules beyond
``[community]`` and the automatic agent's settings, which the agent and
client components read (:func:`agent_config`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.clock import trio_deadline
from p2pd.components.status import extend_status
from p2pd.config import DAY, Config, Section, Table
from p2pd.control.trading import register_trading_methods
from p2pd.errors import ConfigError, PeerGone
from p2pd.net.identity import NodeIdentity
from p2pd.roles.agent import AgentConfig, AgentConfigError
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.reconcile import Reconciler
from p2pd.roles.trading import Market, MarketRules
from protocol import MAX_HOPS, MAX_WH

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class TradingConfig:
    """``[trading]``: market rules beyond [community], and the automatic agent.

    Prices are money units per kWh (docs/settlement.md); ``None`` takes the
    agent's defaults, derived from ``[tariffs]``.
    """

    # Defaults come from the objects these keys configure, so there is one
    # source of truth for each (AgentConfig for the agent, MarketRules for
    # the market).
    agent: bool = AgentConfig.enabled
    lead_slots: int = AgentConfig.lead_slots
    min_wh: int = AgentConfig.min_wh
    sell_price: int | None = AgentConfig.sell_price
    sell_floor: int | None = AgentConfig.sell_floor
    buy_ceiling: int | None = AgentConfig.buy_ceiling
    post_bids: bool = AgentConfig.post_bids
    bid_price: int | None = AgentConfig.bid_price
    ticks_per_slot: int = AgentConfig.ticks_per_slot
    max_takes_per_tick: int = AgentConfig.max_takes_per_tick
    max_ahead_seconds: int = MarketRules.max_ahead
    gossip_hops: int = MarketRules.hops
    take_timeout: float = MarketRules.take_timeout
    take_attempts: int = MarketRules.take_attempts
    relay: bool = True
    """Forward takes between members that have no session with each other (docs/protocol.md §12.9)."""


def parse_trading(t: Table) -> TradingConfig:
    d = TradingConfig()
    return TradingConfig(
        agent=t.boolean("agent", d.agent),
        lead_slots=t.integer("lead_slots", d.lead_slots, 1, 96),
        # The agent offers at least min_wh: an order the wire must be able to carry.
        min_wh=t.integer("min_wh", d.min_wh, 1, MAX_WH),
        sell_price=t.price("sell_price"),
        sell_floor=t.price("sell_floor"),
        buy_ceiling=t.price("buy_ceiling"),
        post_bids=t.boolean("post_bids", d.post_bids),
        bid_price=t.price("bid_price"),
        ticks_per_slot=t.integer("ticks_per_slot", d.ticks_per_slot, 1, 60),
        max_takes_per_tick=t.integer("max_takes_per_tick", d.max_takes_per_tick, 1, 1000),
        max_ahead_seconds=t.integer("max_ahead_seconds", d.max_ahead_seconds, 60, 7 * DAY),
        gossip_hops=t.integer("gossip_hops", d.gossip_hops, 0, MAX_HOPS),
        take_timeout=t.number("take_timeout", d.take_timeout, 0.1, 300.0),
        take_attempts=t.integer("take_attempts", d.take_attempts, 1, 10),
        relay=t.boolean("relay", d.relay),
    )


TRADING = Section("trading", parse_trading)


def market_rules(config: Config, trading: TradingConfig) -> MarketRules:
    """The market's rules: [community]'s slots and gate, [trading]'s limits."""
    return MarketRules(slot_len=config.community.slot_seconds,
                       gate_closure=config.community.gate_closure_seconds,
                       max_ahead=trading.max_ahead_seconds, hops=trading.gossip_hops,
                       take_timeout=trading.take_timeout, take_attempts=trading.take_attempts)


def agent_config(config: Config, trading: TradingConfig) -> AgentConfig:
    """The agent's settings: [trading] prices bounded by [tariffs].

    Raises :class:`ConfigError` naming the keys, e.g. ``[trading].sell_floor:
    40000 is below [tariffs].export_price 47000``.
    """
    tariffs = config.tariffs
    checks: tuple[tuple[str, int | None, Callable[[int], bool], str], ...] = (
        ("sell_floor", trading.sell_floor, lambda v: v >= tariffs.export_price,
         f"is below [tariffs].export_price {tariffs.export_price}"),
        ("sell_price", trading.sell_price, lambda v: v >= tariffs.export_price,
         f"is below [tariffs].export_price {tariffs.export_price}"),
        ("buy_ceiling", trading.buy_ceiling, lambda v: v <= tariffs.import_price,
         f"is above [tariffs].import_price {tariffs.import_price}"),
        ("bid_price", trading.bid_price, lambda v: v <= tariffs.import_price,
         f"is above [tariffs].import_price {tariffs.import_price}"),
    )
    for key, value, ok, bound in checks:
        if value is not None and not ok(value):
            raise ConfigError(f"[trading].{key}: {value} {bound} (trading would lose against the supplier)")
    try:
        return AgentConfig(
            enabled=trading.agent, lead_slots=trading.lead_slots, min_wh=trading.min_wh,
            export_tariff=tariffs.export_price, retail_tariff=tariffs.import_price,
            sell_price=trading.sell_price, sell_floor=trading.sell_floor,
            buy_ceiling=trading.buy_ceiling, post_bids=trading.post_bids,
            bid_price=trading.bid_price, ticks_per_slot=trading.ticks_per_slot,
            max_takes_per_tick=trading.max_takes_per_tick)
    except AgentConfigError as exc:
        raise ConfigError(f"[trading]: {str(exc).removeprefix('agent config: ')}") from exc

# Node counters the market keeps (p2pd/roles/trading.py) that status reports.
MARKET_COUNTERS = ("orders_posted", "orders_accepted", "cancels_accepted", "trades_taken",
                   "trades_sold", "trades_bought", "takes_duplicate", "take_retries")


def market_status(market: Market, writer: ReceiptWriter) -> dict[str, Any]:
    """Book size and trade counters for ``status``."""
    now = market.now()
    live = [e for e in market.book.values() if e.order.expiry > now]
    counters = market.counters
    return {
        "orders_in_book": len(live),
        "our_orders": sum(1 for e in live if market.is_own(e)),
        "trades": counters["trades_taken"] + counters["trades_sold"] + counters["trades_bought"],
        "receipts_committed": writer.receipts,
        "counters": {k: counters[k] for k in MARKET_COUNTERS if counters[k]}
        | {k: v for k, v in counters.items() if k.startswith(("takes_refused:", "orders_rejected:"))},
    }


async def serve_pruning(market: Market, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Drop expired orders from the book at every slot boundary (market time)."""
    task_status.started()
    slot = market.rules.slot_len
    while True:
        boundary = (int(market.clock.now()) // slot + 1) * slot
        await trio.sleep_until(trio_deadline(market.clock, boundary))
        dropped = market.prune()
        if dropped:
            log.debug("orders_pruned", count=dropped)
        await market.drop_stale_pending()


class TradingComponent:
    name = "trading"
    section = TRADING

    def check(self, config: Config, identity: NodeIdentity) -> None:
        """[trading] prices against [tariffs], whether or not the agent runs
        (the client component and p2pctl post use them too)."""
        agent_config(config, TRADING.get(config))

    async def start(self, ctx: DaemonContext) -> None:
        trading = TRADING.get(ctx.config)
        writer = ReceiptWriter(ctx.repo)
        await ctx.nursery.start(writer.run)
        market = Market(ctx.node, ctx.repo, writer, rules=market_rules(ctx.config, trading),
                        relay=trading.relay)
        await market.load()
        # The daemon opens no session before every component started; a
        # session that exists anyway (a caller that started components on a
        # running node) never ran the open hook: run it now.
        for conn in list(ctx.node.sessions.values()):
            try:
                await market._on_session_open(conn)
            except PeerGone:
                pass
        ctx.services["writer"] = writer
        ctx.services["market"] = market
        # The market's writer may be wrapped later (replication): commit through it.
        reconciler = Reconciler(ctx.node, ctx.repo, lambda rec: market.writer.commit(rec),
                                credentials=market.credentials, clock=market.clock)
        for conn in list(ctx.node.sessions.values()):
            await reconciler._on_open(conn)
        ctx.services["reconciler"] = reconciler
        await ctx.nursery.start(reconciler.serve)
        await ctx.nursery.start(serve_pruning, market)
        register_trading_methods(ctx, market)
        extend_status(ctx.control, "market", lambda: market_status(market, writer))
        log.info("market_ready", role=ctx.identity.credential.role, our_orders=len(market.book),
                 slot_seconds=market.rules.slot_len)


DAEMON_COMPONENT = TradingComponent()
