"""S2 end to end: two representatives trade for six clients within their delegations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.errors import TradeError
from p2pd.market.disputes import export_bundle, verify_bundle
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.refusals import refusals_of
from p2pd.roles.representative import Representative, delegate, revoke, send_report
from protocol import Reason
from protocol.delegation import (
    AgentAccepted,
    AgentReceipt,
    AgentRefused,
    AgentTake,
    AgentTerms,
    Delegation,
)
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


async def s2(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery, community: Community,
             ) -> tuple[dict[str, Representative], dict[str, Node], dict[str, MemoryRepository]]:
    reps: dict[str, Representative] = {}
    repos: dict[str, MemoryRepository] = {}
    for name in ("repA", "repB"):
        node = await make_node(name, ident=community.member(name, role="representative"))
        repos[name] = MemoryRepository()
        writer = ReceiptWriter(repos[name])
        await nursery.start(writer.run)
        reps[name] = Representative(node, writer, take_timeout=2.0)
    await link(reps["repA"].node, reps["repB"].node)
    clients = {}
    # c0..c2 are repA's clients, c3..c5 repB's.  net Wh: + surplus, - need.
    plan = {"c0": 1200, "c1": 800, "c2": -600, "c3": 1000, "c4": -1500, "c5": -900}
    for i, (name, net) in enumerate(plan.items()):
        rep = reps["repA" if i < 3 else "repB"]
        clients[name] = node = await make_node(name)
        await link(node, rep.node)
        await delegate(node, rep.me, max_wh_per_slot=2000, min_sell_price=60_000, max_buy_price=120_000,
                       valid_from=int(NOW) - 60, valid_until=int(NOW) + 86400)
        await send_report(node, rep.me, SLOT_START, SLOT, net)
    await eventually(lambda: all(len(r.delegations.by_id) == 6 for r in reps.values())
                   and len(reps["repA"].reports) == 3 and len(reps["repB"].reports) == 3)
    return reps, clients, repos


async def test_two_representatives_trade_for_six_clients(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    reps, clients, repos = await s2(make_node, nursery, community)
    a, b = reps["repA"], reps["repB"]
    assert a.clients == ["c0", "c1", "c2"] and b.clients == ["c3", "c4", "c5"]
    await a.offer_for_clients(SLOT_START)
    await b.offer_for_clients(SLOT_START)
    await eventually(lambda: len(a.book) == 1 and len(b.book) == 2)
    got_b = await b.buy_for_clients(SLOT_START)
    got_a = await a.buy_for_clients(SLOT_START)
    # repB's clients need 2400 and get all 2000 of repA's surplus; repA's c2 gets 600 of c3's 1000.
    assert sum(r.terms.wh for r in got_b) == 2000 and sum(r.terms.wh for r in got_a) == 600
    for r in got_a + got_b:
        t = r.terms
        assert t.seller_agent != t.seller and t.buyer_agent != t.buyer  # principal and agent named
        assert r.seller_delegation is not None and r.buyer_delegation is not None
        # both representatives hold the same receipt
        for repo in repos.values():
            stored = repo.get_receipt(t.trade_id)
            assert stored is not None and stored.encoded == r.encode()
    # The exported bundle verifies offline, delegations included.
    creds = [n.identity.credential for n in clients.values()] + [r.node.identity.credential for r in reps.values()]
    bundle = export_bundle(community.name, [r.encode() for r in got_a + got_b], creds)
    report = verify_bundle(bundle, {community.issuer.public})
    assert report.ok and report.valid == len(got_a + got_b), report.problems


async def test_a_representative_beyond_its_delegation_is_refused_and_provable(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    reps, clients, _ = await s2(make_node, nursery, community)
    a, b = reps["repA"], reps["repB"]
    (offer,) = [o for o in await a.offer_for_clients(SLOT_START) if o.principal == "c0"]
    await eventually(lambda: offer.order_id in b.book)
    g = b.book[offer.order_id]
    c4 = b.delegation_of("c4")
    assert c4 is not None
    # repB, gone rogue, bypasses its own checks and asks for more than c4 allowed per slot.
    too_much = AgentTerms(b"R" * 16, "c0", "repA", "c4", "repB", "", offer.order_id, b"", SLOT_START, SLOT,
                          1200, offer.price, int(NOW))
    tight = Delegation.create(clients["c4"].identity.keys.signing, delegation_id=b"t" * 16, principal="c4",
                              agent="repB", max_wh_per_slot=1000, min_sell_price=0, max_buy_price=120_000,
                              valid_from=int(NOW) - 60, valid_until=int(NOW) + 86400)
    answers: list[AgentRefused] = []

    async def refused(conn: Any, msg: AgentRefused) -> bool:
        answers.append(msg)
        return True

    refusals_of(b.node).routes.insert(0, refused)
    await b.node.send_to("repA", AgentTake(too_much, tight, too_much.sign(b.node.identity.keys.signing)))
    await eventually(lambda: bool(answers))
    assert answers[0].reason == Reason.OUT_OF_BOUNDS and a.counters["takes_refused:OUT_OF_BOUNDS"] == 1
    # The honest taker side refuses too (price above the buyer's bound) before sending anything.
    with pytest.raises(TradeError) as err:
        await b.take(g, "c4", 500, price=130_000)
    assert err.value.reason == Reason.OUT_OF_BOUNDS
    # Provable afterwards: a receipt repB and a colluding seller signed beyond c4's bound is flagged.
    seller = clients["c3"]
    terms = AgentTerms(b"P" * 16, "c3", "c3", "c4", "repB", "", b"", b"", SLOT_START, SLOT, 1200, 90_000,
                       int(NOW))
    bad = AgentReceipt(terms, None, tight, terms.sign(seller.identity.keys.signing),
                       terms.sign(b.node.identity.keys.signing), b"")
    creds = [n.identity.credential for n in clients.values()] + [r.node.identity.credential for r in reps.values()]
    report = verify_bundle(export_bundle(community.name, [bad.encode()], creds), {community.issuer.public})
    (problem,) = report.problems
    assert problem.kind == "delegation_exceeded" and problem.proof["receipts"] == [bad.encode().hex()]
    # Two receipts each within the bound but together over it are flagged too.
    halves = []
    for tid in (b"h" * 16, b"i" * 16):
        t = AgentTerms(tid, "c3", "c3", "c4", "repB", "", b"", b"", SLOT_START, SLOT, 700, 90_000, int(NOW))
        halves.append(AgentReceipt(t, None, tight, t.sign(seller.identity.keys.signing),
                                   t.sign(b.node.identity.keys.signing), b""))
    report = verify_bundle(export_bundle(community.name, [h.encode() for h in halves], creds),
                           {community.issuer.public})
    assert [p.kind for p in report.problems] == ["delegation_exceeded"]


async def test_revoked_delegation_stops_trading(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    reps, clients, _ = await s2(make_node, nursery, community)
    a, b = reps["repA"], reps["repB"]
    offers = await a.offer_for_clients(SLOT_START)
    await eventually(lambda: len(b.book) == len(offers))
    d0 = a.delegation_of("c0")
    assert d0 is not None
    await revoke(clients["c0"], d0)
    await eventually(lambda: d0.delegation_id in a.delegations.revoked and d0.delegation_id in b.delegations.revoked)
    assert "c0" not in a.clients
    g = next(g for g in b.book.values() if g.order.principal == "c0")
    with pytest.raises(TradeError) as err:
        await b.take(g, "c4", 100)
    assert err.value.reason == Reason.REVOKED


async def test_meter_reports_only_from_the_client_itself(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    reps, clients, _ = await s2(make_node, nursery, community)
    a = reps["repA"]
    # c3 (not repA's client) cannot report for c0: the report must come from its principal's session.
    await link(clients["c3"], a.node)
    from protocol.delegation import MeterReport, MeterReportMsg
    forged = MeterReport.create(clients["c3"].identity.keys.signing, principal="c0", agent="repA",
                                slot_start=SLOT_START, slot_len=SLOT, net_wh=9999, issued_at=int(NOW))
    await clients["c3"].send_to("repA", MeterReportMsg(forged))
    await eventually(lambda: a.counters["reports_rejected"] == 1)
    assert a.reports[("c0", SLOT_START)].net_wh == 1200


async def test_only_representatives_represent(
    make_node: Any, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = await make_node("plain")
    with pytest.raises(TradeError) as err:
        Representative(node, ReceiptWriter(MemoryRepository()))
    assert err.value.reason == Reason.BAD_ROLE


async def test_a_stranger_asking_for_a_trade_by_its_id_gets_a_refusal_not_the_receipt(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 11: the representative path used to hand back an already stored
    # receipt to anyone who named its trade id (the S1 path refused with REPLAY).
    reps, _, _ = await s2(make_node, nursery, community)
    a, b = reps["repA"], reps["repB"]
    (offer,) = [o for o in await a.offer_for_clients(SLOT_START) if o.principal == "c0"]
    await eventually(lambda: offer.order_id in b.book)
    receipt = await b.take(b.book[offer.order_id], "c4", 500)
    tid = receipt.terms.trade_id
    # Mallory, another representative with a delegation of her own, replays the trade id.
    mallory = await make_node("mallory", ident=community.member("mallory", role="representative"))
    m_writer = ReceiptWriter(MemoryRepository())
    await nursery.start(m_writer.run)
    m = Representative(mallory, m_writer, take_timeout=2.0)
    c9 = await make_node("c9")
    await link(c9, mallory)
    await link(mallory, a.node)
    d9 = await delegate(c9, "mallory", max_wh_per_slot=2000, min_sell_price=0, max_buy_price=120_000,
                        valid_from=int(NOW) - 60, valid_until=int(NOW) + 86400)
    await eventually(lambda: d9.delegation_id in a.delegations.by_id and d9.delegation_id in m.delegations.by_id)
    stolen = AgentTerms(tid, "c0", "repA", "c9", "mallory", "", offer.order_id, b"", SLOT_START, SLOT,
                        500, offer.price, int(NOW))
    answers: list[Any] = []

    async def refused(conn: Any, msg: AgentRefused) -> bool:
        answers.append(msg)
        return True

    async def accepted(conn: Any, msg: Any) -> None:
        answers.append(msg)

    refusals_of(mallory).routes.insert(0, refused)
    mallory.handlers[AgentAccepted] = accepted  # see whatever repA answers
    await mallory.send_to("repA", AgentTake(stolen, d9, stolen.sign(mallory.identity.keys.signing)))
    await eventually(lambda: bool(answers))
    assert isinstance(answers[0], AgentRefused) and answers[0].reason == Reason.REPLAY
    assert a.counters["takes_refused:REPLAY"] == 1
    # The honest parties still hold the one receipt.
    assert a.receipts[tid] == receipt and b.receipts[tid] == receipt


async def test_full_disk_at_the_orders_agent_refuses_agent_takes_and_resumes(
    make_node: Any, nursery: trio.Nursery, community: Community,
    autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 12: a store that cannot commit answers AgentRefused(STORAGE_UNAVAILABLE), keeps the session."""
    from store import StorageUnavailable

    reps, _clients, repos = await s2(make_node, nursery, community)
    a, b = reps["repA"], reps["repB"]
    await a.offer_for_clients(SLOT_START)
    await eventually(lambda: len(b.book) == 2)  # c0's and c1's surplus
    link_ab = a.node.sessions["repB"]
    commit = repos["repA"].commit_receipts

    def full(batch: Any) -> Any:
        raise StorageUnavailable("database or disk is full")

    repos["repA"].commit_receipts = full  # type: ignore[method-assign]
    assert await b.buy_for_clients(SLOT_START) == []
    assert b.counters["takes_failed:STORAGE_UNAVAILABLE"] >= 1
    assert a.counters["takes_refused:STORAGE_UNAVAILABLE"] == b.counters["takes_failed:STORAGE_UNAVAILABLE"]
    assert a.node.sessions.get("repB") is link_ab and not link_ab.finished.is_set()
    assert a.node.counters["internal_errors"] == 0 and not a.receipts
    repos["repA"].commit_receipts = commit  # type: ignore[method-assign]
    got = await b.buy_for_clients(SLOT_START)
    assert sum(r.terms.wh for r in got) == 2000
    assert {r.terms.trade_id for r in got} == set(a.receipts)
