"""Daemon component "trading": the receipt writer, the market and its control methods.

On start: a :class:`~p2pd.roles.receipt_writer.ReceiptWriter` runs in the daemon's
nursery, a :class:`~p2pd.roles.trading.Market` is built with the rules of
``[community]`` and ``[trading]``, our own live orders come back from the
store (``market.load()``), and expired orders leave the book once per slot.
The member's role comes from its credential: brokers get the book and the
APIs, but the market refuses their orders (BAD_ROLE).

Puts ``"market"`` and ``"writer"`` into ``ctx.services`` and adds a
``market`` object to ``status``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.clock import trio_deadline
from p2pd.components.sections import TradingConfig, market_rules, section
from p2pd.components.sections import extend_status as _extend_status
from p2pd.control.trading import register_trading_methods
from p2pd.errors import PeerGone
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

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
        "our_orders": sum(1 for e in live if e.order.member_id == market.me),
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


class TradingComponent:
    name = "trading"

    async def start(self, ctx: DaemonContext) -> None:
        trading: TradingConfig = section(ctx.config, "trading")
        writer = ReceiptWriter(ctx.repo)
        await ctx.nursery.start(writer.run)
        market = Market(ctx.node, ctx.repo, writer, rules=market_rules(ctx.config, trading))
        await market.load()
        # Sessions that opened before the market existed (the listener and
        # discovery start first) never ran its open hook: ask them for their
        # books and remember their credentials now.
        for conn in list(ctx.node.sessions.values()):
            try:
                await market._on_session_open(conn)
            except PeerGone:
                pass
        ctx.services["writer"] = writer
        ctx.services["market"] = market
        await ctx.nursery.start(serve_pruning, market)
        register_trading_methods(ctx, market)
        _extend_status(ctx.control, "market", lambda: market_status(market, writer))
        log.info("market_ready", role=ctx.identity.credential.role, our_orders=len(market.book),
                 slot_seconds=market.rules.slot_len)


DAEMON_COMPONENT = TradingComponent()
