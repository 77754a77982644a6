from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from p2pd_test_helpers import NOW, eventually, link

from meter_drivers import SimulatedMeter
from p2pd.clock import TrioWallClock
from p2pd.market.settlement import (
    DEFAULT_EXPORT_PRICE,
    DEFAULT_IMPORT_PRICE,
    SlotEnergy,
    Trade,
    settle_slot,
)
from p2pd.net.node import Node
from p2pd.roles.agent import (
    Agent,
    AgentConfig,
    AgentConfigError,
    PerfectForesight,
    ReadingsForecaster,
)
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from store import MemoryRepository

SLOT = 900
T0 = int(NOW) // SLOT * SLOT  # a slot boundary; agents tick a little after it
TARGET = T0 + 2 * SLOT  # the farthest slot a lead_slots=2 agent trades


class Fixed:
    """A forecaster that says the same for every slot."""

    def __init__(self, wh: int) -> None:
        self.wh = wh

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        return self.wh


class Health:
    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy


@dataclasses.dataclass
class Member:
    node: Node
    market: Market
    repo: MemoryRepository


@pytest.fixture
def make_member(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery) -> Callable[..., Awaitable[Member]]:
    async def factory(name: str) -> Member:
        node = await make_node(name)
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0), clock=TrioWallClock(T0 + 10))
        return Member(node, market, repo)

    return factory


def test_config_defaults_sit_between_the_tariffs() -> None:
    cfg = AgentConfig()
    assert cfg.ask == (DEFAULT_EXPORT_PRICE + DEFAULT_IMPORT_PRICE) // 2 == 93_000
    assert (cfg.floor, cfg.ceiling, cfg.bid) == (47_000, 139_000, 93_000)


@pytest.mark.parametrize("kwargs, words", [
    ({"sell_floor": 46_999}, "below the export tariff"),
    ({"sell_price": 40_000}, "below"),
    ({"buy_ceiling": 139_001}, "above the retail tariff"),
    ({"bid_price": 120_000, "buy_ceiling": 110_000}, "above buy_ceiling"),
    ({"lead_slots": 0}, ">= 1"),
    ({"export_tariff": 150_000}, "export_tariff <= retail_tariff"),
])
def test_config_refuses_prices_worse_than_the_supplier(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(AgentConfigError, match=words):
        AgentConfig(**kwargs)


@given(floor=st.integers(47_000, 139_000), ask_up=st.integers(0, 100_000),
       ceiling=st.integers(1, 139_000), wh=st.integers(1, 10_000), imp=st.integers(0, 20_000),
       exp=st.integers(0, 20_000))
def test_every_trade_an_agent_accepts_leaves_both_better_off(
        floor: int, ask_up: int, ceiling: int, wh: int, imp: int, exp: int) -> None:
    try:
        cfg = AgentConfig(sell_floor=floor, sell_price=floor + ask_up, buy_ceiling=ceiling,
                          bid_price=min(ceiling, floor))
    except AgentConfigError:
        return
    # Whatever price a trade gets, it lies in [floor, ceiling] of the agents
    # that made it, so within [export, retail].
    for price in {cfg.ask, cfg.floor, cfg.ceiling, cfg.bid}:
        if not cfg.floor <= price <= cfg.ceiling:
            continue
        result = settle_slot(T0, SLOT, [Trade(b"t", b"S", b"B", wh, price)],
                             {b"S": SlotEnergy(0, exp), b"B": SlotEnergy(imp, 0)}, settled_at=T0)
        assert all(st_.saving >= 0 for st_ in result.statements.values())


async def test_seller_posts_once_per_slot_at_its_ask(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice = await make_member("alice")
    agent = Agent(alice.market, Fixed(500), AgentConfig(lead_slots=2))
    now = alice.market.now()
    await agent.tick(now)
    await agent.tick(now + 60)
    mine = [e.order for e in alice.market.book.values()]
    # one offer per open slot (the next and the one after), each posted once
    assert sorted(o.slot_start for o in mine) == [T0 + SLOT, TARGET]
    assert all(o.side == "sell" and o.wh == 500 and o.price == 93_000 for o in mine)
    assert agent.counters["offers_posted"] == 2


async def test_no_offer_while_the_meter_is_unhealthy(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice = await make_member("alice")
    meter = Health(False)
    agent = Agent(alice.market, Fixed(800), meter=meter)
    await agent.tick(alice.market.now())
    assert alice.market.book == {}
    assert agent.counters["sell_skipped_meter_unhealthy"] > 0
    meter.healthy = True
    await agent.tick(alice.market.now())
    assert len(alice.market.book) == 2


async def test_buyer_takes_cheapest_offers_until_covered(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_member(n) for n in ("alice", "bob", "carol")]
    await link(carol.node, alice.node)
    await link(carol.node, bob.node)
    cheap = await alice.market.post("sell", TARGET, 300, 80_000)
    dear = await bob.market.post("sell", TARGET, 1000, 120_000)
    await alice.market.post("sell", TARGET, 1000, 139_500)  # above carol's ceiling
    await eventually(lambda: len(carol.market.book) == 3)
    agent = Agent(carol.market, Fixed(-700), AgentConfig(lead_slots=2))
    await agent.tick(carol.market.now())
    bought = {r.order_id: r.wh for r in carol.repo.receipts()}
    assert bought[cheap.order_id] == 300
    assert bought[dear.order_id] == 400  # the rest, from the next cheapest
    assert sum(bought.values()) == 700


async def test_buyer_recovers_from_insufficient_and_not_found(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_member(n) for n in ("alice", "bob", "carol")]
    await link(carol.node, alice.node)
    await link(bob.node, alice.node)
    order = await alice.market.post("sell", TARGET, 500, 90_000)
    gone = await alice.market.post("sell", TARGET, 500, 85_000)
    await eventually(lambda: len(carol.market.book) == 2 and len(bob.market.book) == 2)
    await bob.market.take(order.order_id, 300)  # carol's view still says 500 remain
    await alice.market.cancel(gone.order_id)
    carol.market.book[gone.order_id] = bob.market.book[gone.order_id]  # a stale book entry
    agent = Agent(carol.market, lambda_forecast(TARGET, -400))
    await agent.tick(carol.market.now())
    got = [r for r in carol.repo.receipts() if r.order_id == order.order_id]
    assert [r.wh for r in got] == [200]  # retried with what the owner said was left
    assert agent.counters["take_failed:INSUFFICIENT"] == 1
    assert agent.counters["take_failed:NOT_FOUND"] == 1


def lambda_forecast(slot: int, wh: int) -> Any:
    class OneSlot:
        def net_wh(self, slot_start: int, slot_len: int) -> int:
            return wh if slot_start == slot else 0

    return OneSlot()


async def test_buyer_dials_the_owner_once_when_no_session(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_member(n) for n in ("alice", "bob", "carol")]
    await link(bob.node, alice.node)
    await link(carol.node, bob.node)
    order = await alice.market.post("sell", TARGET, 400, 90_000)
    await eventually(lambda: order.order_id in carol.market.book)
    dialled: list[str] = []

    async def dial(member: str) -> None:
        dialled.append(member)
        await link(carol.node, alice.node)

    agent = Agent(carol.market, lambda_forecast(TARGET, -250), dial=dial)
    await agent.tick(carol.market.now())
    assert dialled == ["alice"]
    assert [r.wh for r in carol.repo.receipts()] == [250]


async def test_without_a_dialler_an_unreachable_owner_is_skipped(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, bob, carol = [await make_member(n) for n in ("alice", "bob", "carol")]
    await link(bob.node, alice.node)
    await link(carol.node, bob.node)
    order = await alice.market.post("sell", TARGET, 400, 90_000)
    await eventually(lambda: order.order_id in carol.market.book)
    agent = Agent(carol.market, lambda_forecast(TARGET, -250))
    await agent.tick(carol.market.now())
    assert carol.repo.receipts() == [] and agent.counters["no_session"] == 1


async def test_bids_are_posted_for_the_rest_and_filled_by_sellers(
    make_member: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    alice, carol = await make_member("alice"), await make_member("carol")
    await link(carol.node, alice.node)
    buyer = Agent(carol.market, lambda_forecast(TARGET, -300), AgentConfig(post_bids=True))
    await buyer.tick(carol.market.now())
    bids = [e.order for e in carol.market.book.values() if e.order.side == "buy"]
    assert [(b.wh, b.price) for b in bids] == [(300, 93_000)]
    await eventually(lambda: bids[0].order_id in alice.market.book)
    seller = Agent(alice.market, lambda_forecast(TARGET, 1000))
    await seller.tick(alice.market.now())
    assert [(r.seller, r.buyer, r.wh) for r in alice.repo.receipts()] == [("alice", "carol", 300)]
    offers = [e.order for e in alice.market.book.values() if e.order.member_id == "alice"]
    assert [o.wh for o in offers] == [700]  # the rest of the surplus is offered


def test_perfect_foresight_is_the_meter_profile() -> None:
    meter = SimulatedMeter({"seed": 3, "member": 1, "kind": "prosumer", "origin": T0 - 86400})
    f = PerfectForesight(meter)
    a, b = meter.reading_at(T0), meter.reading_at(T0 + SLOT)
    assert f.net_wh(T0, SLOT) == (b.export_wh - a.export_wh) - (b.import_wh - a.import_wh)


async def test_readings_forecaster_uses_recent_slots(
    autojump_clock: trio.testing.MockClock
) -> None:
    clock = TrioWallClock(T0 + 10)
    f = ReadingsForecaster(clock)
    assert f.net_wh(T0 + SLOT, SLOT) == 0  # knows nothing yet
    meter = SimulatedMeter({"seed": 3, "member": 1, "kind": "prosumer", "origin": T0 - 86400})
    for t in range(T0 - 4 * SLOT, T0 + 1, 60):
        f.add(meter.reading_at(t))
    past = [PerfectForesight(meter).net_wh(T0 - k * SLOT, SLOT) for k in range(1, 5)]
    expected = sum(past) / 4
    assert abs(f.net_wh(T0 + SLOT, SLOT) - expected) <= 1
