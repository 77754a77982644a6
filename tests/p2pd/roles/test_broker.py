"""Broker (S3/S4) end to end with real nodes: auction, cheating brokers, a crash."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.errors import TradeError
from p2pd.net.node import Node
from p2pd.roles.broker import Broker, BrokerClient, agent_receipt_record, audit_slot, rerun
from p2pd.roles.fallback import Fallback
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import MatchFinal, Reason
from protocol.brokerage import MatchPropose
from protocol.delegation import AgentReceipt, AgentTerms
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


@dataclasses.dataclass
class Party:
    node: Node
    client: BrokerClient
    repo: MemoryRepository
    market: Market


@pytest.fixture
def make_party(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery,
               community: Community) -> Callable[..., Awaitable[Party]]:
    async def factory(name: str, role: str = "prosumer") -> Party:
        node = await make_node(name, ident=community.member(name, role=role))
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)

        async def commit(r: AgentReceipt) -> None:
            await writer.commit(agent_receipt_record(r, int(NOW)))

        client = BrokerClient(node, commit=commit, submit_timeout=2.0)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0))
        return Party(node, client, repo, market)

    return factory


async def community_with_broker(make_node: Any, make_party: Any, community: Community,
                                n: int = 4) -> tuple[Broker, list[Party]]:
    bnode = await make_node("broker", ident=community.member("broker", role="broker"))
    broker = Broker(bnode, sign_timeout=2.0)
    parties = [await make_party(f"p{i}") for i in range(n)]
    for p in parties:
        await link(p.node, bnode)
    return broker, parties


async def test_auction_end_to_end_every_party_holds_the_signed_trades(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    broker, (s1, s2, b1, b2) = await community_with_broker(make_node, make_party, community)
    for p, side, wh, price in ((s1, "sell", 1000, 50_000), (s2, "sell", 1000, 80_000),
                               (b1, "buy", 1500, 120_000), (b2, "buy", 800, 90_000)):
        await p.client.submit("broker", p.client.make_order(side, SLOT_START, SLOT, wh, price))
    summary = await broker.close_slot(SLOT_START)
    assert summary.volume_wh == 2000 and summary.price == (80_000 + 90_000) // 2
    await eventually(lambda: all(p.client.receipts for p in (s1, s2, b1, b2)))
    for p in (s1, s2, b1, b2):
        for tid, r in p.client.receipts.items():
            stored = p.repo.get_receipt(tid)
            assert stored is not None and stored.encoded == r.encode()
            assert r.broker_sig and r.terms.broker == "broker"
    # Anyone with the published book re-runs the clearing and gets the same result.
    await eventually(lambda: SLOT_START in s1.client.summaries)
    book = s1.client.books[SLOT_START]
    bhash, result = rerun(book)
    assert bhash == summary.book_hash and result.result_hash() == summary.result_hash
    for p in (s1, s2, b1, b2):
        audit = audit_slot(book, summary, broker.node.identity.credential,
                           list(p.client.receipts.values()), p.node.member_id)
        assert audit.ok, audit.problems
    # Energy and money balance over all receipts.
    all_r = {tid: r for p in (s1, s2, b1, b2) for tid, r in p.client.receipts.items()}
    assert sum(r.terms.wh for r in all_r.values()) == 2000


async def test_roles_refuse_actions_outside_them(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    broker, (p0, p1) = await community_with_broker(make_node, make_party, community, n=2)
    with pytest.raises(TradeError) as err:
        Broker(p0.node)
    assert err.value.reason == Reason.BAD_ROLE
    # A broker may not post orders for itself: its own client refuses, so does the market.
    other_broker = await make_node("broker2", ident=community.member("broker2", role="broker"))
    bclient = BrokerClient(other_broker)
    with pytest.raises(TradeError) as err:
        await bclient.submit("p0", bclient.make_order("sell", SLOT_START, SLOT, 100, 50_000))
    assert err.value.reason == Reason.BAD_ROLE
    bmarket = Market(other_broker, MemoryRepository(), ReceiptWriter(MemoryRepository()))
    with pytest.raises(TradeError) as err:
        await bmarket.post("sell", SLOT_START, 100, 50_000)
    assert err.value.reason == Reason.BAD_ROLE
    # An order signed by someone else than the submitting member is refused.
    foreign = p1.client.make_order("sell", SLOT_START, SLOT, 100, 50_000)
    with pytest.raises(TradeError) as err:
        await p0.client.submit("broker", foreign)
    assert err.value.reason == Reason.NOT_A_MEMBER


async def test_a_member_cannot_cross_its_own_order(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    broker, (p0, _) = await community_with_broker(make_node, make_party, community, n=2)
    await p0.client.submit("broker", p0.client.make_order("sell", SLOT_START, SLOT, 500, 60_000))
    with pytest.raises(TradeError) as err:  # a bid above its own ask: a wash trade
        await p0.client.submit("broker", p0.client.make_order("buy", SLOT_START, SLOT, 500, 70_000))
    assert err.value.reason == Reason.OUT_OF_BOUNDS
    # a bid below its own ask can never match it, so it is accepted
    await p0.client.submit("broker", p0.client.make_order("buy", SLOT_START, SLOT, 500, 50_000))
    summary = await broker.close_slot(SLOT_START)
    assert summary.orders == 2


async def test_a_cheating_broker_cannot_add_alter_or_drop_a_trade(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    broker, (s, b) = await community_with_broker(make_node, make_party, community, n=2)
    sell = s.client.make_order("sell", SLOT_START, SLOT, 1000, 60_000)
    buy = b.client.make_order("buy", SLOT_START, SLOT, 1000, 100_000)
    await s.client.submit("broker", sell)
    await b.client.submit("broker", buy)
    key = broker.node.identity.keys.signing
    conn = broker.node.sessions["p0"]
    base = AgentTerms(b"x" * 16, "p0", "p0", "p1", "p1", "broker", sell.order_id, buy.order_id,
                      SLOT_START, SLOT, 500, 80_000, int(NOW))
    cheats = {
        "added": dataclasses.replace(base, trade_id=b"a" * 16, seller_order=b"z" * 16),
        "price": dataclasses.replace(base, trade_id=b"p" * 16, price=59_999),
        "overfill": dataclasses.replace(base, trade_id=b"o" * 16, wh=1001),
    }
    for terms in cheats.values():
        await conn.send(MatchPropose(terms, bytes(32), terms.sign(key), b.node.identity.credential))
    await eventually(lambda: sum(v for k, v in s.client.counters.items()
                               if k.startswith("proposals_refused")) == 3)
    c = s.client.counters
    assert c["proposals_refused:NOT_FOUND"] == 1
    assert c["proposals_refused:OUT_OF_BOUNDS"] == 1
    assert c["proposals_refused:INSUFFICIENT"] == 1
    assert c["proposals_signed"] == 0 and not s.client.receipts
    # Dropping: the broker silently skips delivering the trade. The parties'
    # audit of the published book finds the match they hold no receipt for.

    async def drop(receipt: AgentReceipt) -> None:
        return None

    broker._deliver = drop  # type: ignore[method-assign]
    summary = await broker.close_slot(SLOT_START)
    await eventually(lambda: SLOT_START in s.client.summaries)
    audit = audit_slot(s.client.books[SLOT_START], summary, broker.node.identity.credential,
                       list(s.client.receipts.values()), "p0")
    assert not audit.ok and "missing" in audit.problems[0]


async def test_broker_crash_mid_slot_falls_back_to_s1_and_loses_nothing(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    broker, (s, b, late) = await community_with_broker(make_node, make_party, community, n=3)
    await link(s.node, b.node)
    await link(late.node, s.node)
    fallbacks = {p.node.member_id: Fallback(p.client, p.market, "broker") for p in (s, b, late)}
    assert await fallbacks["p0"].place("sell", SLOT_START, 1500, 60_000) == "broker"
    assert await fallbacks["p1"].place("buy", SLOT_START, 1000, 100_000) == "broker"

    async def crash(receipt: AgentReceipt) -> None:  # both signed; the broker dies before delivering
        await broker.node.aclose()

    broker.before_delivery.append(crash)
    await broker.close_slot(SLOT_START)
    # Both agents finish the signed match between themselves...
    await eventually(lambda: s.client.receipts and b.client.receipts)
    (r,) = s.client.receipts.values()
    assert b.client.receipts[r.terms.trade_id].encode() == r.encode() and r.terms.wh == 1000
    assert s.repo.get_receipt(r.terms.trade_id) is not None
    # ...and the seller's remaining 500 Wh is re-offered as an S1 order, which a peer takes.
    await eventually(lambda: any(e.order.member_id == "p0" for e in late.market.book.values()))
    (oid,) = [k for k, e in late.market.book.items() if e.order.member_id == "p0"]
    assert late.market.book[oid].order.wh == 500
    receipt = await late.market.take(oid, 500)
    assert receipt.terms.seller == "p0"
    assert await fallbacks["p2"].place("buy", SLOT_START, 100, 100_000) == "direct"


async def test_broker_crash_after_delivering_to_one_side_still_ends_with_both_receipts(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    # The broker sends the final receipt to the seller, then dies: the buyer,
    # left waiting, sends its signature to the seller, which no longer waits
    # (it committed) but answers with its own, once.
    broker, (s, b) = await community_with_broker(make_node, make_party, community, n=2)
    await link(s.node, b.node)
    await s.client.submit("broker", s.client.make_order("sell", SLOT_START, SLOT, 1000, 50_000))
    await b.client.submit("broker", b.client.make_order("buy", SLOT_START, SLOT, 1000, 90_000))

    async def half_deliver(receipt: AgentReceipt) -> None:
        await broker.node.send_to(receipt.terms.seller_agent, MatchFinal(receipt))
        await broker.node.aclose()

    broker.before_delivery.append(half_deliver)
    await broker.close_slot(SLOT_START)
    await eventually(lambda: bool(s.client.receipts))
    assert not b.client.receipts and len(b.client.pending) == 1
    assert await b.client.finish_directly() == 1
    await eventually(lambda: bool(b.client.receipts))
    (r,) = s.client.receipts.values()
    assert b.client.receipts[r.terms.trade_id].encode() == r.encode()
    assert b.repo.get_receipt(r.terms.trade_id) is not None
    assert s.client.counters["signatures_resent"] == 1


async def test_agents_apart_when_the_broker_dies_finish_the_match_once_they_meet(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    # The broker dies before delivering; the two agents have no session with
    # each other, so their signatures go nowhere. When a session opens later,
    # each sends its signature again: both end with the same receipt.
    broker, (s, b) = await community_with_broker(make_node, make_party, community, n=2)
    fallbacks = [Fallback(p.client, p.market, "broker") for p in (s, b)]
    await s.client.submit("broker", s.client.make_order("sell", SLOT_START, SLOT, 1000, 50_000))
    await b.client.submit("broker", b.client.make_order("buy", SLOT_START, SLOT, 1000, 90_000))

    async def crash(receipt: AgentReceipt) -> None:
        await broker.node.aclose()

    broker.before_delivery.append(crash)
    await broker.close_slot(SLOT_START)
    await eventually(lambda: all(f.counters["broker_lost"] == 1 for f in fallbacks))
    assert not s.client.receipts and not b.client.receipts
    assert len(s.client.pending) == len(b.client.pending) == 1
    await link(b.node, s.node)
    await eventually(lambda: bool(s.client.receipts) and bool(b.client.receipts))
    (r,) = s.client.receipts.values()
    assert b.client.receipts[r.terms.trade_id].encode() == r.encode()
    assert s.repo.get_receipt(r.terms.trade_id) is not None and b.repo.get_receipt(r.terms.trade_id) is not None
    assert not s.client.pending and not b.client.pending


async def test_an_answer_lost_with_its_session_is_given_again_on_the_next(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    # The broker delivered to the seller only, then died. The buyer's disk is
    # full when the seller's answer arrives, so the answer is spent and the
    # match stays pending; the session then drops. Space returns and the two
    # meet again: the buyer asks again on the new session, the seller answers
    # again (once per session), and the buyer commits.
    from store import StorageUnavailable

    broker, (s, b) = await community_with_broker(make_node, make_party, community, n=2)
    await s.client.submit("broker", s.client.make_order("sell", SLOT_START, SLOT, 1000, 50_000))
    await b.client.submit("broker", b.client.make_order("buy", SLOT_START, SLOT, 1000, 90_000))

    async def half_deliver(receipt: AgentReceipt) -> None:
        await broker.node.send_to(receipt.terms.seller_agent, MatchFinal(receipt))
        await broker.node.aclose()

    broker.before_delivery.append(half_deliver)
    await broker.close_slot(SLOT_START)
    await eventually(lambda: bool(s.client.receipts) and len(b.client.pending) == 1)
    assert await b.client.finish_directly() == 0  # no session with the seller yet
    commit = b.repo.commit_receipts

    def full(batch: Any) -> Any:
        raise StorageUnavailable("database or disk is full")

    b.repo.commit_receipts = full  # type: ignore[method-assign]
    first, _ = await link(b.node, s.node)
    await eventually(lambda: b.client.counters["finals_not_stored"] == 1)
    assert s.client.counters["signatures_resent"] == 1 and not b.client.receipts
    await first.close(Reason.SHUTDOWN, "test")
    await eventually(lambda: "p0" not in b.node.sessions and "p1" not in s.node.sessions)
    b.repo.commit_receipts = commit  # type: ignore[method-assign]
    await link(b.node, s.node)
    await eventually(lambda: bool(b.client.receipts))
    (r,) = s.client.receipts.values()
    assert b.client.receipts[r.terms.trade_id].encode() == r.encode()
    assert b.repo.get_receipt(r.terms.trade_id) is not None
    assert s.client.counters["signatures_resent"] == 2
    assert b.client.counters["signatures_resent_on_open"] == 2


async def test_a_party_whose_disk_is_full_keeps_the_match_pending_and_its_sessions(
    make_node: Any, make_party: Any, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 12: MatchFinal that cannot be committed leaves the match pending, sessions open."""
    from store import StorageUnavailable

    broker, (s, b) = await community_with_broker(make_node, make_party, community, n=2)
    await link(s.node, b.node)
    await s.client.submit("broker", s.client.make_order("sell", SLOT_START, SLOT, 1000, 50_000))
    await b.client.submit("broker", b.client.make_order("buy", SLOT_START, SLOT, 1000, 90_000))
    commit = b.repo.commit_receipts

    def full(batch: Any) -> Any:
        raise StorageUnavailable("database or disk is full")

    b.repo.commit_receipts = full  # type: ignore[method-assign]
    to_broker = b.node.sessions["broker"]
    await broker.close_slot(SLOT_START)
    await eventually(lambda: bool(s.client.receipts) and b.client.counters["finals_not_stored"] == 1)
    assert not b.client.receipts and len(b.client.pending) == 1
    assert b.node.sessions.get("broker") is to_broker and not to_broker.finished.is_set()
    assert b.node.counters["internal_errors"] == 0
    # Space returns: the match is finished with the seller's signature.
    b.repo.commit_receipts = commit  # type: ignore[method-assign]
    assert await b.client.finish_directly() == 1
    await eventually(lambda: bool(b.client.receipts))
    (r,) = s.client.receipts.values()
    assert b.repo.get_receipt(r.terms.trade_id) is not None
