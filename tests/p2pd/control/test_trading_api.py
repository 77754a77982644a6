"""The trading control methods over two in-memory nodes (mock clock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, link

from p2pd.config import TariffsConfig
from p2pd.control.server import INVALID_PARAMS, ControlServer, RpcError
from p2pd.control.trading import TRADE_REFUSED, register_trading_methods, trade_error
from p2pd.errors import TradeError
from p2pd.events import OrderSeen
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market
from protocol import MAX_PRICE, MAX_WH, Reason
from store import MemoryRepository, ReadingRecord

SLOT = int(NOW) // 900 * 900 + 2 * 900


async def api(node: Node, nursery: trio.Nursery) -> tuple[ControlServer, MemoryRepository]:
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    market = Market(node, repo, writer)
    server = ControlServer()
    register_trading_methods(SimpleNamespace(repo=repo, identity=node.identity, control=server,
                                             config=SimpleNamespace(tariffs=TariffsConfig())), market)
    return server, repo


async def test_trade_through_the_methods(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery,
                                         autojump_clock: trio.abc.Clock) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    a, _ = await api(alice, nursery)
    b, b_repo = await api(bob, nursery)
    await link(bob, alice)
    with trio.fail_after(5):
        async with bob.events.subscribe() as events:
            order = await a.call("orders.post", {"side": "buy", "slot_start": SLOT, "wh": 300,
                                                 "price": 100_000})
            async for ev in events:
                if isinstance(ev, OrderSeen):
                    break
    assert (await b.call("orders.list"))["orders"][0]["order_id"] == order["order_id"]
    trade = await b.call("orders.take", {"order_id": order["order_id"], "wh": 200,
                                         "trade_id": "ab" * 16})
    assert (trade["seller"], trade["buyer"], trade["trade_id"]) == ("bob", "alice", "ab" * 16)
    again = await b.call("orders.take", {"order_id": order["order_id"], "wh": 200, "trade_id": "ab" * 16})
    assert again["receipt"] == trade["receipt"]  # a retried take is the same trade
    rows = (await b.call("trades.list", {"since": 0, "member": "alice"}))["trades"]
    assert [(r["side"], r["counterparty"], r["amount"]) for r in rows] == [("sell", "alice", 20_000)]
    with pytest.raises(RpcError) as err:
        await b.call("orders.post", {"side": "sell", "slot_start": SLOT + 1, "wh": 5, "price": 1})
    assert err.value.code == TRADE_REFUSED and err.value.data == {"reason": "OUT_OF_BOUNDS"}

    meter = bob.identity.credential.metering_point
    b_repo.add_readings([ReadingRecord(meter, 100 + i, i, 0, None) for i in range(5)])
    got = await b.call("readings.list", {"start": 101, "end": 103})
    assert got["meter_id"] == meter and [r["ts"] for r in got["readings"]] == [101, 102]


async def test_order_params_stop_exactly_at_the_wire_bounds(
        make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery,
        autojump_clock: trio.abc.Clock) -> None:
    server, _ = await api(await make_node("alice"), nursery)
    order = {"side": "sell", "slot_start": SLOT, "wh": MAX_WH, "price": MAX_PRICE}
    posted = await server.call("orders.post", order)  # the wire takes the largest order
    assert (posted["wh"], posted["price"]) == (MAX_WH, MAX_PRICE)
    for key, value in (("wh", MAX_WH + 1), ("price", MAX_PRICE + 1)):
        with pytest.raises(RpcError) as err:
            await server.call("orders.post", {**order, key: value})
        assert err.value.code == INVALID_PARAMS and key in err.value.message, err.value.message


def test_trade_error_carries_the_reason() -> None:
    err = trade_error(TradeError("only 5 Wh remain", Reason.INSUFFICIENT, 5))
    assert err.to_json() == {"code": -32007, "message": "only 5 Wh remain",
                             "data": {"reason": "INSUFFICIENT", "remaining_wh": 5}}
    other: Any = trade_error(TradeError("odd", "CUSTOM"))
    assert other.data == {"reason": "CUSTOM"}
