"""Reconciliation (docs/protocol.md 12.7): a receipt held by one party reaches the other."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, eventually, link

from p2pd.errors import TradeTimeout
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.reconcile import Reconciler
from p2pd.roles.trading import Market, MarketRules
from protocol import ReceiptsRequest, TradeAccepted
from store import MemoryRepository

SLOT_START = (int(NOW) // 900 + 2) * 900


async def trader(make_node: Any, nursery: trio.Nursery, name: str) -> tuple[Node, Market, Reconciler]:
    node = await make_node(name)
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0))
    rec = Reconciler(node, repo, writer.commit, credentials=market.credentials)
    return node, market, rec


async def test_a_receipt_only_the_seller_holds_reaches_the_buyer_when_they_reconnect(
        make_node: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    alice, a_market, a_rec = await trader(make_node, nursery, "alice")
    bob, b_market, b_rec = await trader(make_node, nursery, "bob")
    conn, _ = await link(bob, alice)
    order = await a_market.post("sell", SLOT_START, 500, 90_000)
    await eventually(lambda: order.order_id in b_market.book)

    async def lost(c: Any, msg: Any) -> None:
        return None

    bob.handlers[TradeAccepted] = lost
    with pytest.raises(TradeTimeout) as err:
        await b_market.take(order.order_id, 500)
    tid = err.value.trade_id
    assert tid is not None
    # The taker also lost its pending take (say, an old backup): only reconciliation can help.
    await b_market._forget_pending(tid)
    assert a_market.repo.get_receipt(tid) is not None and b_market.repo.get_receipt(tid) is None
    await conn.close()
    await link(bob, alice)
    await eventually(lambda: b_market.repo.get_receipt(tid) is not None)
    assert b_market.repo.get_receipt(tid).encoded == a_market.repo.get_receipt(tid).encoded  # type: ignore[union-attr]
    assert b_rec.counters["receipts_reconciled"] == 1 and a_rec.counters["receipts_delivered"] == 1


async def test_nobody_gets_receipts_of_trades_that_are_not_theirs(
        make_node: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    alice, a_market, a_rec = await trader(make_node, nursery, "alice")
    bob, b_market, _ = await trader(make_node, nursery, "bob")
    mallory, m_market, m_rec = await trader(make_node, nursery, "mallory")
    await link(bob, alice)
    m_conn, _ = await link(mallory, alice)
    order = await a_market.post("sell", SLOT_START, 500, 90_000)
    await eventually(lambda: order.order_id in b_market.book)
    receipt = await b_market.take(order.order_id, 300)
    await m_conn.send(ReceiptsRequest((receipt.terms.trade_id,)))
    await eventually(lambda: a_rec.counters["requests_refused"] == 1)
    assert m_market.repo.get_receipt(receipt.terms.trade_id) is None
    assert m_rec.counters["receipts_reconciled"] == 0
