"""The household's view of its node: what the dashboard and Home Assistant show.

:func:`household` gathers, from the store and the running node:

* energy bought and sold peer-to-peer, and what it cost or earned, for
  delivery slots of today and of this month (UTC days, as ``p2pctl
  statements``), from our receipts;
* the saving against the supplier-only bill, from the signed slot
  statements (settled slots only: a slot is settled a few minutes after it
  ends, docs/settlement.md);
* our own offer and bid in the *trading slot*: the next slot whose gate has
  not closed, where orders are live (orders for the slot in progress expired
  at its gate closure);
* that slot's order book, the peers (sessions and the addresses we dial),
  the meter's health and today's trades.

The pure parts (:func:`totals`, :func:`day_chart`, :func:`trading_slot`)
take plain records so that they are tested without a daemon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from p2pd import storage
from p2pd.market.settlement import PRICE_SCALE, amount
from store import ReadingRecord, ReceiptRecord, StatementRecord

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

DAY = 86400
MAX_TRADES_SHOWN = 200


@dataclass(frozen=True)
class Totals:
    """Peer-to-peer trading over a period, and the settled bill's saving."""

    bought_wh: int = 0
    sold_wh: int = 0
    cost: int = 0
    """Money paid to peers (money units, PRICE_SCALE to one currency unit)."""
    revenue: int = 0
    trades: int = 0
    saving: int = 0
    """Supplier-only bill minus the bill with peer-to-peer trading, settled slots."""
    bill: int = 0
    bill_without_p2p: int = 0
    settled_slots: int = 0


@dataclass(frozen=True)
class TradeView:
    trade_id: str
    side: str
    """"buy" or "sell", from our side."""
    counterparty: str
    slot_start: int
    wh: int
    price: int
    amount: int
    created_at: int


@dataclass(frozen=True)
class SlotOrders:
    """Our live orders in one slot: energy left and best price, each way."""

    slot_start: int
    offer_wh: int = 0
    offer_price: int | None = None
    bid_wh: int = 0
    bid_price: int | None = None


@dataclass(frozen=True)
class PeerView:
    member_id: str
    role: str | None
    address: str
    initiator: bool
    since: float | None
    messages_in: int
    messages_out: int


@dataclass(frozen=True)
class MeterView:
    driver: str
    state: str
    """"starting", "ok" or "retrying" (meter_drivers.HealthState)."""
    healthy: bool
    attempt: int
    last_error: str | None
    reading_ts: int | None
    import_wh: int | None
    export_wh: int | None
    power_w: int | None


@dataclass(frozen=True)
class Household:
    """Everything the household's views show; see the module docstring."""

    member_id: str
    community: str
    role: str
    currency: str
    now: int
    day_start: int
    month_start: int
    today: Totals
    month: Totals
    slot: SlotOrders
    book: list[dict[str, Any]]
    peers: list[PeerView]
    targets: list[dict[str, Any]]
    meter: MeterView | None
    trades_today: list[TradeView]
    store_ok: bool
    money_scale: int = PRICE_SCALE
    tariff_import: int = 0
    tariff_export: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def day_start(now: int) -> int:
    return now - now % DAY


def month_start(now: int) -> int:
    d = datetime.fromtimestamp(now, timezone.utc)
    return int(d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())


def next_month(start: int) -> int:
    d = datetime.fromtimestamp(start, timezone.utc)
    d = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
    return int(d.timestamp())


def trading_slot(now: int, slot_len: int, gate_closure: int) -> int:
    """The first slot whose gate (``gate_closure`` s before it starts) is still open at ``now``."""
    first = (now + gate_closure) // slot_len * slot_len + slot_len
    return first


def totals(receipts: Iterable[ReceiptRecord], statements: Iterable[StatementRecord], me: str,
           start: int, end: int) -> Totals:
    """Trading and savings for delivery slots starting in ``[start, end)``."""
    bought = sold = cost = revenue = trades = 0
    for r in receipts:
        if not start <= r.slot_start < end or me not in (r.seller, r.buyer):
            continue
        trades += 1
        if r.buyer == me:
            bought += r.wh
            cost += amount(r.wh, r.price)
        if r.seller == me:
            sold += r.wh
            revenue += amount(r.wh, r.price)
    saving = bill = without = settled = 0
    for s in statements:
        if start <= s.slot_start < end:
            settled += 1
            saving += int(s.fields.get("saving", 0))
            bill += int(s.fields.get("bill", 0))
            without += int(s.fields.get("bill_without_p2p", 0))
    return Totals(bought, sold, cost, revenue, trades, saving, bill, without, settled)


def slot_orders(book: Sequence[dict[str, Any]], me: str, slot: int) -> SlotOrders:
    """Our live orders in ``slot`` from an order-book view (``Market.orders``)."""
    offers = [o for o in book if o["member"] == me and o["slot_start"] == slot and o["side"] == "sell"]
    bids = [o for o in book if o["member"] == me and o["slot_start"] == slot and o["side"] == "buy"]
    return SlotOrders(
        slot,
        sum(o["remaining_wh"] for o in offers), min((o["price"] for o in offers), default=None),
        sum(o["remaining_wh"] for o in bids), max((o["price"] for o in bids), default=None))


def trade_view(r: ReceiptRecord, me: str) -> TradeView:
    mine_sold = r.seller == me
    return TradeView(r.trade_id.hex(), "sell" if mine_sold else "buy",
                     r.buyer if mine_sold else r.seller, r.slot_start, r.wh, r.price,
                     amount(r.wh, r.price), r.created_at)


@dataclass(frozen=True)
class HourBar:
    """One hour of the day chart, Wh."""

    hour: int
    import_wh: int
    export_wh: int
    bought_wh: int
    sold_wh: int


def day_chart(readings: Sequence[ReadingRecord], receipts: Iterable[ReceiptRecord], me: str,
              start: int) -> list[HourBar]:
    """Import and export metered, and energy bought and sold, per UTC hour of the day at ``start``.

    Metered energy between two readings counts in the hour of the later one;
    traded energy in the hour its slot starts.
    """
    imp = [0] * 24
    exp = [0] * 24
    bought = [0] * 24
    sold = [0] * 24
    ordered = sorted(readings, key=lambda r: r.ts)
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        hour = (cur.ts - start) // 3600
        if 0 <= hour < 24:
            imp[hour] += max(0, cur.import_wh - prev.import_wh)
            exp[hour] += max(0, cur.export_wh - prev.export_wh)
    for r in receipts:
        hour = (r.slot_start - start) // 3600
        if 0 <= hour < 24 and me in (r.seller, r.buyer):
            if r.buyer == me:
                bought[hour] += r.wh
            if r.seller == me:
                sold[hour] += r.wh
    return [HourBar(h, imp[h], exp[h], bought[h], sold[h]) for h in range(24)]


def meter_view(ctx: DaemonContext) -> MeterView | None:
    if ctx.meter is None:
        return None
    h = ctx.meter.health
    last = h.last_reading
    return MeterView(str(ctx.config.meter.driver), h.state.value, bool(ctx.meter.healthy), h.attempt,
                     h.last_error, last.ts if last else None, last.import_wh if last else None,
                     last.export_wh if last else None, last.power_w if last else None)


def peer_views(ctx: DaemonContext) -> list[PeerView]:
    return [PeerView(c.member_id, c.peer.role if c.peer else None, c.address, c.initiator,
                     c.stats.established_at, c.stats.messages_in, c.stats.messages_out)
            for c in sorted(ctx.node.sessions.values(), key=lambda c: c.member_id)]


async def household(ctx: DaemonContext) -> Household:
    """The household's view now (store reads run in a worker thread)."""
    now = int(ctx.node.clock.now())
    me = ctx.identity.member_id
    community = ctx.config.community
    day, month = day_start(now), month_start(now)
    max_ahead = 7 * DAY
    repo = ctx.repo
    receipts = await storage.call(repo, repo.receipts, me, month - max_ahead)
    statements = await storage.call(repo, repo.statements, me, month, next_month(month))
    market = ctx.services.get("market")
    slot = trading_slot(now, community.slot_seconds, community.gate_closure_seconds)
    book: list[dict[str, Any]] = market.orders(slot) if market is not None else []
    own = market.orders() if market is not None else []
    trades = [trade_view(r, me) for r in receipts if day <= r.slot_start < day + DAY]
    tariffs = ctx.config.tariffs
    return Household(
        member_id=me, community=ctx.policy.community, role=ctx.identity.credential.role,
        currency=tariffs.currency, now=now, day_start=day, month_start=month,
        today=totals(receipts, statements, me, day, day + DAY),
        month=totals(receipts, statements, me, month, next_month(month)),
        slot=slot_orders(own, me, slot), book=[{**o, "mine": o["member"] == me} for o in book],
        peers=peer_views(ctx),
        targets=ctx.discovery.status()["targets"] if ctx.discovery is not None else [],
        meter=meter_view(ctx), trades_today=trades[-MAX_TRADES_SHOWN:],
        store_ok=ctx.store_health.ok, tariff_import=tariffs.import_price,
        tariff_export=tariffs.export_price)


async def todays_chart(ctx: DaemonContext) -> list[HourBar]:
    """:func:`day_chart` for today, from the store."""
    now = int(ctx.node.clock.now())
    start = day_start(now)
    me = ctx.identity.member_id
    repo = ctx.repo
    readings = await storage.call(repo, repo.readings, ctx.identity.credential.metering_point,
                                  start - 3600, start + DAY)
    receipts = await storage.call(repo, repo.receipts, me, start - 7 * DAY)
    return day_chart(readings, receipts, me, start)
