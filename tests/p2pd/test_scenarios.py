"""S3 end to end: a representative's aggregated orders and prosumers' own at one broker."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.roles.broker import Broker, BrokerClient, agent_receipt_record, audit_slot
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.representative import Representative, delegate, send_report, split_fill
from protocol.delegation import AgentReceipt
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


async def test_s3_broker_sees_only_aggregates_and_every_party_holds_its_trades(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    bnode = await make_node("broker", ident=community.member("broker", role="broker"))
    broker = Broker(bnode, sign_timeout=2.0)
    rnode = await make_node("rep", ident=community.member("rep", role="representative"))
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    rep = Representative(rnode, writer)

    async def commit(r: AgentReceipt) -> None:
        await writer.commit(agent_receipt_record(r, int(NOW)))

    rclient = BrokerClient(rnode, commit=commit)
    await link(rnode, bnode)
    for name, net, floor in (("c0", 700, 50_000), ("c1", 300, 50_000), ("c2", 500, 70_000)):
        c = await make_node(name)
        await link(c, rnode)
        await delegate(c, "rep", max_wh_per_slot=1000, min_sell_price=floor, max_buy_price=0,
                       valid_from=int(NOW) - 60, valid_until=int(NOW) + 86400)
        await send_report(c, "rep", SLOT_START, SLOT, net)
    await eventually(lambda: len(rep.reports) == 3 and len(rep.clients) == 3)
    buyers = []
    for name, wh, price in (("b0", 900, 100_000), ("b1", 400, 60_000)):
        n = await make_node(name)
        await link(n, bnode)
        cl = BrokerClient(n)
        await cl.submit("broker", cl.make_order("buy", SLOT_START, SLOT, wh, price))
        buyers.append(cl)
    steps = rep.aggregate_orders(SLOT_START)
    # one order per price step: the broker sees 2 orders from "rep", no household ids
    assert [(o.side, o.price, o.wh, alloc) for o, alloc in steps] == [
        ("sell", 50_000, 1000, {"c0": 700, "c1": 300}), ("sell", 70_000, 500, {"c2": 500})]
    for o, _ in steps:
        await rclient.submit("broker", o)
    assert {o.principal for o in broker.slots[SLOT_START].orders.values()} == {"rep", "b0", "b1"}
    summary = await broker.close_slot(SLOT_START)
    await eventually(lambda: sum(r.terms.wh for r in rclient.receipts.values()) == summary.volume_wh)
    # b0 (100k) takes 900 of the 50k step, b1 (60k) the last 100 of it; the 70k step is too dear.
    assert summary.volume_wh == 1000 and summary.price == (50_000 + 60_000) // 2
    for cl in buyers:
        assert sum(r.terms.wh for r in cl.receipts.values()) == {"b0": 900, "b1": 100}[cl.node.member_id]
    await eventually(lambda: SLOT_START in rclient.summaries)
    audit = audit_slot(rclient.books[SLOT_START], summary, bnode.identity.credential,
                       list(rclient.receipts.values()), "rep")
    assert audit.ok, audit.problems
    # The representative splits each step's fill among its clients.
    for o, alloc in steps:
        filled = sum(r.terms.wh for r in rclient.receipts.values() if r.terms.seller_order == o.order_id)
        shares = split_fill(alloc, filled)
        assert sum(shares.values()) == filled and all(shares[m] <= alloc[m] for m in alloc)


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 10_000), min_size=1), st.data())
def test_split_fill_is_exact_and_bounded(alloc: dict[str, int], data: st.DataObject) -> None:
    filled = data.draw(st.integers(0, sum(alloc.values())))
    shares = split_fill(alloc, filled)
    assert sum(shares.values()) == filled and all(0 <= shares[m] <= alloc[m] for m in alloc)
