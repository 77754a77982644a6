"""Control methods for trading by hand and for the member's records.

``market.info``, ``orders.list``, ``orders.post``, ``orders.cancel``, ``orders.take``,
``trades.list``, ``receipts.export`` and ``readings.list``; registered by the
trading component (p2pd/components/trading.py). docs/control-api.md has a
request and response for each.

A refused trade action (:class:`~p2pd.errors.TradeError`) answers with
:data:`TRADE_REFUSED` and ``data = {"reason": "<protocol Reason name>"}``
(plus ``remaining_wh`` when the owner said how much is left), so scripts can
branch on the reason without parsing messages.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from p2pd import storage
from p2pd.control.server import ERROR_CODES, INVALID_PARAMS, Param, RpcError
from p2pd.errors import TradeError
from p2pd.market.posting import latest_slot, next_open_slot
from p2pd.market.settlement import PRICE_SCALE, amount
from p2pd.roles.trading import Market, describe_order, describe_terms
from protocol import MAX_PRICE, MAX_TIME, MAX_WH, Reason
from store import ReceiptRecord

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

# Application error codes (docs/control-api.md, "Errors").
TRADE_REFUSED = -32007
REVOCATION_REJECTED = -32008

if not any(cls is TradeError for cls, _ in ERROR_CODES):
    # Ahead of the P2pdError catch-all; handlers below add the reason as data.
    ERROR_CODES.insert(0, (TradeError, TRADE_REFUSED))

MAX_READINGS = 100_000
ID_HEX = 32  # order and trade ids are 16 bytes
T = TypeVar("T")


def trade_error(exc: TradeError) -> RpcError:
    """The JSON-RPC error for a refused post, take or cancel."""
    reason = exc.reason.name if isinstance(exc.reason, Reason) else str(exc.reason)
    data: dict[str, Any] = {"reason": reason}
    if exc.remaining_wh is not None:
        data["remaining_wh"] = exc.remaining_wh
    if exc.trade_id is not None:
        # A take that got no answer stays pending: retry it with this id.
        data["trade_id"] = exc.trade_id.hex()
    return RpcError(TRADE_REFUSED, str(exc), data)


def _refusals(func: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(func)
    async def wrapper(**kwargs: Any) -> T:
        try:
            return await func(**kwargs)
        except TradeError as exc:
            raise trade_error(exc) from exc

    return wrapper


def parse_id(name: str, text: str) -> bytes:
    """16 bytes from 32 hex digits; RpcError(INVALID_PARAMS) otherwise."""
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    if len(data) * 2 != ID_HEX:
        raise RpcError(INVALID_PARAMS, f"invalid params: {name} must be {ID_HEX} hex digits")
    return data


def describe_receipt(rec: ReceiptRecord, me: str) -> dict[str, Any]:
    return {
        "trade_id": rec.trade_id.hex(), "order_id": rec.order_id.hex(),
        "side": "sell" if rec.seller == me else "buy",
        "counterparty": rec.buyer if rec.seller == me else rec.seller,
        "seller": rec.seller, "buyer": rec.buyer, "slot_start": rec.slot_start,
        "slot_len": rec.slot_len, "wh": rec.wh, "price": rec.price,
        "amount": amount(rec.wh, rec.price), "created_at": rec.created_at,
    }


def register_trading_methods(ctx: DaemonContext, market: Market) -> None:
    """Register the trading and records methods on ``ctx.control``."""
    repo = ctx.repo
    me = ctx.identity.member_id
    meter_id = ctx.identity.credential.metering_point

    tariffs = ctx.config.tariffs
    currency = tariffs.currency

    def market_info() -> dict[str, Any]:
        """the market's rules, clock and tariffs: what p2pctl needs to read slots and prices"""
        now, rules = market.now(), market.rules
        return {"now": now, "slot_seconds": rules.slot_len, "gate_closure_seconds": rules.gate_closure,
                "max_ahead_seconds": rules.max_ahead, "next_slot": next_open_slot(rules, now),
                "latest_slot": latest_slot(rules, now), "currency": currency,
                "money_scale": PRICE_SCALE, "max_price": MAX_PRICE, "import_price": tariffs.import_price,
                "export_price": tariffs.export_price}

    def orders_list(slot_start: int | None) -> dict[str, Any]:
        """live orders in the book (ours and others'), by slot and price"""
        rows = market.orders(slot_start)
        # A pseudonymous order of ours names a pseudonym, not us: the wallet knows it is ours.
        return {"currency": currency,
                "orders": [{**r, "mine": r["member"] == me or market.owned(bytes.fromhex(r["order_id"])) is not None}
                           for r in rows]}

    @_refusals
    async def orders_post(side: str, slot_start: int, wh: int, price: int,
                          expiry: int | None) -> dict[str, Any]:
        """sign, store and gossip an order of ours"""
        if side not in ("sell", "buy"):
            raise RpcError(INVALID_PARAMS, "invalid params: side must be \"sell\" or \"buy\"")
        order = await market.post(side, slot_start, wh, price, expiry)
        return {**describe_order(order), "remaining_wh": order.wh, "mine": True, "currency": currency}

    @_refusals
    async def orders_cancel(order_id: str) -> dict[str, Any]:
        """withdraw an order of ours (gossiped to the community)"""
        await market.cancel(parse_id("order_id", order_id))
        return {"order_id": order_id.lower(), "cancelled": True}

    @_refusals
    async def orders_take(order_id: str, wh: int, trade_id: str | None) -> dict[str, Any]:
        """take wh of someone's order; returns the committed receipt"""
        oid = parse_id("order_id", order_id)
        tid = parse_id("trade_id", trade_id) if trade_id is not None else None
        receipt = await market.take(oid, wh, trade_id=tid)
        return {**describe_terms(receipt.terms), "receipt": receipt.encode().hex(), "currency": currency}

    async def trades_list(since: int | None, member: str | None) -> dict[str, Any]:
        """our trades (from stored receipts), optionally since a time or with one member"""
        records = await storage.call(repo, repo.receipts, member, since)
        return {"currency": currency, "trades": [describe_receipt(r, me) for r in records]}

    async def receipts_export(since: int | None, member: str | None) -> dict[str, Any]:
        """a self-contained receipts bundle for disputes (p2pd receipts verify)"""
        return await storage.call(repo, market.export, member, since)

    async def readings_list(start: int, end: int) -> dict[str, Any]:
        """our stored meter readings with start <= ts < end"""
        if end <= start:
            raise RpcError(INVALID_PARAMS, "invalid params: end must be after start")
        rows = await storage.call(repo, repo.readings, meter_id, start, end)
        return {"meter_id": meter_id, "truncated": len(rows) > MAX_READINGS,
                "readings": [{"ts": r.ts, "import_wh": r.import_wh, "export_wh": r.export_wh,
                              "power_w": r.power_w} for r in rows[:MAX_READINGS]]}

    time = Param(int, lo=0, hi=MAX_TIME)
    opt_time = Param(int, required=False, lo=0, hi=MAX_TIME)
    member_param = Param(str, required=False, max_len=64, help="a member id")
    server = ctx.control
    server.register("market.info", market_info)
    server.register("orders.list", orders_list, {
        "slot_start": Param(int, required=False, lo=0, hi=MAX_TIME, help="only this delivery slot")})
    server.register("orders.post", orders_post, {
        "side": Param(str, max_len=4, help="sell or buy"),
        "slot_start": Param(int, lo=0, hi=MAX_TIME, help="delivery slot start, unix seconds"),
        "wh": Param(int, lo=1, hi=MAX_WH),
        "price": Param(int, lo=0, hi=MAX_PRICE, help="money units per kWh"),
        "expiry": Param(int, required=False, lo=0, hi=MAX_TIME, help="default: gate closure"),
    })
    server.register("orders.cancel", orders_cancel, {"order_id": Param(str, max_len=ID_HEX)})
    server.register("orders.take", orders_take, {
        "order_id": Param(str, max_len=ID_HEX),
        "wh": Param(int, lo=1, hi=MAX_WH),
        "trade_id": Param(str, required=False, max_len=ID_HEX,
                          help="reuse to retry a take safely (default: random)"),
    })
    server.register("trades.list", trades_list, {
        "since": opt_time, "member": member_param})
    server.register("receipts.export", receipts_export, {
        "since": opt_time, "member": member_param})
    server.register("readings.list", readings_list, {"start": time, "end": time})
