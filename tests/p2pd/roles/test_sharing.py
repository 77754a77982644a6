"""Shared clearing (S3) end to end: three representatives, a broker that sees only sums.

Each test builds a broker, representatives and their clients in memory
(autojump clock), lets the representatives join a slot's shared clearing and
clears it; the broker's received messages are recorded to show what it
learns. docs/protocol.md section 15, "Shared clearing"; docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link

import p2pd.roles.sharing as broker_side
from p2pd.components.broker import BrokerRunner
from p2pd.components.representative import RepresentativeRunner
from p2pd.market.sharing import RoundSums, add, at_price, clear_curves, curve, price_grid
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import Broker, BrokerClient, agent_receipt_record
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.representative import Representative, delegate, send_report
from p2pd.roles.sharing import SharedBroker
from p2pd.roles.sharing_client import SharedClient
from protocol import (
    AgentReceipt,
    FillClaim,
    Message,
    Share,
    SharedClearing,
    ShareResult,
    ShareRound,
    ShareSum,
    unpack_vector,
)
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT
GRID = price_grid(40_000, 140_000, 10_000)

# net Wh per client (+ sells, - buys) and its (min_sell_price, max_buy_price).
PLAN: dict[str, dict[str, tuple[int, int, int]]] = {
    "r1": {"a1": (1103, 50_000, 0), "a2": (907, 60_000, 0), "a3": (2011, 60_000, 0)},
    "r2": {"b1": (-1709, 0, 130_000), "b2": (-613, 0, 120_000), "b3": (-1301, 0, 120_000)},
    "r3": {"c1": (503, 70_000, 0), "c2": (1297, 70_000, 0), "c3": (-307, 0, 80_000), "c4": (-211, 0, 80_000)},
}


def record(node: Node) -> list[Message]:
    """Every message ``node`` handles from now on, in order: what an observer there sees."""
    seen: list[Message] = []
    for cls, handler in list(node.handlers.items()):
        async def tap(conn: PeerConnection, msg: Message, handler: Any = handler) -> None:
            seen.append(msg)
            await handler(conn, msg)

        node.handlers[cls] = tap
    return seen


@dataclass
class World:
    broker: Broker
    shared: SharedBroker
    runner: BrokerRunner
    reps: dict[str, RepresentativeRunner] = field(default_factory=dict)
    repos: dict[str, MemoryRepository] = field(default_factory=dict)
    seen: list[Message] = field(default_factory=list)
    receipts: dict[str, list[AgentReceipt]] = field(default_factory=dict)

    def client(self, rep: str) -> SharedClient:
        shared = self.reps[rep].shared
        assert shared is not None
        return shared


async def s3_world(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery, community: Community,
                   plan: dict[str, dict[str, tuple[int, int, int]]] = PLAN) -> World:
    bnode = await make_node("broker", ident=community.member("broker", role="broker"))
    broker = Broker(bnode, sign_timeout=2.0)
    shared = SharedBroker(broker, GRID, share_timeout=4.0, claim_timeout=2.0)
    world = World(broker, shared, BrokerRunner(broker, bnode.clock, None, shared))
    nodes = {}
    for name in plan:
        node = nodes[name] = await make_node(name, ident=community.member(name, role="representative"))
        world.repos[name] = repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        world.receipts[name] = got = []

        async def commit(r: AgentReceipt, writer: ReceiptWriter = writer, got: list[AgentReceipt] = got) -> None:
            await writer.commit(agent_receipt_record(r, int(NOW)))
            got.append(r)

        client = BrokerClient(node, commit=commit)
        world.reps[name] = RepresentativeRunner(
            Representative(node, writer), node.clock, broker="broker", client=client,
            shared=SharedClient(client, share_wait=2.0))
        await link(node, bnode)
    names = sorted(plan)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            await link(nodes[a], nodes[b])
    for rep, clients in plan.items():
        for name, (net, floor, ceiling) in clients.items():
            c = await make_node(name)
            await link(c, nodes[rep])
            await delegate(c, rep, max_wh_per_slot=5000, min_sell_price=floor, max_buy_price=ceiling,
                           valid_from=int(NOW) - 60, valid_until=int(NOW) + 86400)
            await send_report(c, rep, SLOT_START, SLOT, net)
    await eventually(lambda: all(len(world.reps[rep].rep.reports) == len(clients)
                                 and len(world.reps[rep].rep.clients) == len(clients)
                                 for rep, clients in plan.items()))
    world.seen = record(bnode)
    return world


async def join_all(world: World) -> None:
    for runner in world.reps.values():
        await runner.net_internally(SLOT_START)
        await runner.submit(SLOT_START)
    await eventually(lambda: world.shared.has(SLOT_START)
                     and len(world.shared.slots[SLOT_START].members) == len(world.reps))


async def test_three_representatives_clear_on_sums_and_each_fill_is_its_own_share(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    # r3 nets c3 and c4 against c1 and c2 first (pro rata: both sellers keep a remainder).
    assert world.reps["r3"].counters["netted_wh"] == 518
    summary = await world.runner.close_shared(SLOT_START)
    assert summary is not None
    await trio.testing.wait_all_tasks_blocked()
    result = world.client("r1").slots[SLOT_START].result
    assert isinstance(result, SharedClearing) and result.round == 1 and result.participants == ("r1", "r2", "r3")
    supply, demand = unpack_vector(result.supply), unpack_vector(result.demand)
    # The aggregate is the sum of the three curves: sellers 4021 (r1, at 60k) and
    # 1282 (r3, at 70k), buyers 3623 (r2, up to 120k).
    assert (supply[GRID.index(60_000)], supply[-1], demand[0], demand[-1]) == (4021, 4021 + 1282, 3623, 0)
    cleared = clear_curves(GRID, supply, demand)
    assert (result.price, result.volume_wh) == (cleared.price, cleared.volume_wh)
    assert summary.volume_wh == cleared.volume_wh == 3623 and summary.price == result.price == 90_000
    # Each representative's fill lies within its pro rata share of the aggregate, on its own check.
    for rep in ("r1", "r2", "r3"):
        for side, (got, lo, hi) in world.client(rep).filled(SLOT_START).items():
            assert lo <= got <= hi, (rep, side, got, lo, hi)
    assert sum(r.terms.wh for r in world.receipts["r2"]) == 3623
    # Both sides hold every receipt, and the clients' shares add up to the fills.
    held = {rep: {r.terms.trade_id for r in world.receipts[rep]} for rep in world.reps}
    for r in world.receipts["r2"]:
        assert r.terms.trade_id in held[r.terms.seller_agent] and r.terms.price == result.price
    ledger: dict[str, int] = {}
    for runner in world.reps.values():
        for f in runner.ledger:
            ledger[f.principal] = ledger.get(f.principal, 0) + f.wh
    assert sum(ledger[c] for c in ("b1", "b2", "b3")) == 3623
    assert sum(wh for c, wh in ledger.items() if c[0] in "ac") == 3623


async def test_the_broker_learns_sums_not_households_nor_a_representatives_steps(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    kinds = {type(m).__name__ for m in world.seen}
    assert kinds <= {"ShareJoin", "ShareSum", "FillClaim", "MatchSign"}, kinds
    households = {abs(net) for clients in PLAN.values() for net, _, _ in clients.values()}
    # The sums of shares: uniformly random mod 2^64, no household's Wh, no
    # representative's step or curve point.
    sums = {v for m in world.seen if isinstance(m, ShareSum) for v in unpack_vector(m.sums)}
    assert len([m for m in world.seen if isinstance(m, ShareSum)]) == 3
    curves: set[int] = set()
    for rep in world.reps:
        s = world.client(rep).slots[SLOT_START]
        curves |= set(curve(s.steps, len(GRID))) | {sum(members.values()) for members in s.steps.values()}
    assert not sums & (households | curves)
    assert all(v > 2**40 for v in sums)
    # The claims: each representative's own curve at the price, and nothing else.
    result = world.client("r1").slots[SLOT_START].result
    assert result is not None
    for m in world.seen:
        if isinstance(m, FillClaim):
            s = next(sc.slots[SLOT_START] for sc in (world.client(r) for r in world.reps)
                     if sc.slots[SLOT_START].refs.get("sell") == m.sell_ref)
            own = curve(s.steps, len(GRID))
            assert (m.supply_wh, m.demand_wh) == at_price(GRID, own[:len(GRID)], own[len(GRID):], result.price)
            assert m.supply_wh not in households and m.demand_wh not in households


async def test_a_representative_that_drops_out_mid_round_is_left_out_and_the_others_trade(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    # r3 takes its round but goes silent before sharing: no share, no sum.
    r3 = world.client("r3")
    r3.node.handlers[ShareRound] = _ignore
    summary = await world.runner.close_shared(SLOT_START)
    assert summary is not None and world.shared.counters["rounds_restarted"] == 1
    result = world.client("r1").slots[SLOT_START].result
    assert result is not None and result.round == 2 and result.participants == ("r1", "r2")
    await trio.testing.wait_all_tasks_blocked()
    assert summary.volume_wh == sum(r.terms.wh for r in world.receipts["r2"]) == 3623
    assert world.receipts["r3"] == []
    # The first round's partial sums (r1 and r2 lacked r3's share) never mix with the second's.
    assert world.client("r1").counters["sums_partial"] == 1 and world.client("r1").counters["rounds"] == 2


async def test_a_representative_gone_after_the_result_costs_only_its_own_fill(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    world.client("r3").node.handlers[ShareResult] = _ignore  # it never claims its fill
    summary = await world.runner.close_shared(SLOT_START)
    assert summary is not None and world.shared.counters["claims_missing"] == 1
    await trio.testing.wait_all_tasks_blocked()
    # r1 still sells no more than its share; r2 buys what r1 sells.
    got, lo, hi = world.client("r1").filled(SLOT_START)["sell"]
    assert got <= hi and got == sum(r.terms.wh for r in world.receipts["r2"]) == summary.volume_wh > 0


async def test_a_result_the_aggregate_does_not_give_is_refused(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    real = SharedClearing.create

    def moved(key: Any, **fields: Any) -> SharedClearing:
        fields["price"] += 10_000  # a price the sums do not give
        return real(key, **fields)

    monkeypatch.setattr(SharedClearing, "create", moved)
    await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    for rep in world.reps:
        assert world.client(rep).counters["results_refused"] == 1
        assert world.receipts[rep] == []


async def test_shares_reach_only_participants_and_a_stranger_is_not_one(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    seen = record(world.client("r1").node)
    await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    shares = [m for m in seen if isinstance(m, Share)]
    assert len(shares) == 2  # one from each other participant
    # A share from a member outside the round is refused.
    s = world.client("r1").slots[SLOT_START]
    assert s.shares is not None and not s.shares.receive("mallory", [0] * len(s.shares.own))


async def _ignore(conn: PeerConnection, msg: Message) -> None:
    return None


async def test_netting_leaves_enough_households_on_the_long_side_for_the_broker(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    # In id order a1 would cover a3 alone and a2's last 200 Wh would be one
    # household, held back; netting leaves a remainder with both sellers instead.
    plan = {"r1": {"a1": (1000, 50_000, 0), "a2": (300, 50_000, 0), "a3": (-1100, 0, 130_000)},
            "r2": {"b1": (-700, 0, 130_000), "b2": (-500, 0, 130_000)}}
    world = await s3_world(make_node, nursery, community, plan)
    await join_all(world)
    assert world.reps["r1"].counters["netted_wh"] == 1100
    summary = await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    assert world.client("r1").counters["held_back_wh"] == 0
    assert summary is not None and summary.volume_wh == 200
    fills = {f.principal: f.wh for f in world.reps["r1"].ledger}
    assert fills == {"a1": 154, "a2": 46}


async def test_a_broker_that_feigns_a_dropout_learns_that_curve_and_is_noticed(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The residual risk of docs/protocol.md 15: the broker has every sum of
    # round 1 yet claims r3 dropped out; round 2 without r3 gives it r3's
    # curve as a difference. r3 sees no result for a slot it summed.
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    aggregates: list[tuple[list[int], list[int]]] = []
    real_complete = RoundSums.complete

    def lying_complete(self: RoundSums) -> bool:
        done = real_complete.fget(self)  # type: ignore[attr-defined]
        if done and len(self.participants) == 3:
            aggregates.clear()
            total = add([v for _, v in self.sums.values()])
            aggregates.append((total[:len(GRID)], total[len(GRID):]))
            return False
        return bool(done)

    monkeypatch.setattr(RoundSums, "complete", property(lying_complete))
    monkeypatch.setattr(RoundSums, "survivors", lambda self: ("r1", "r2"))
    await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    result = world.client("r1").slots[SLOT_START].result
    assert result is not None and result.participants == ("r1", "r2")
    (supply3, demand3), = aggregates
    r3 = world.client("r3").slots[SLOT_START]
    own = curve(r3.steps, len(GRID))
    learnt = [a - b for a, b in zip(supply3 + demand3, unpack_vector(result.supply) + unpack_vector(result.demand),
                                    strict=True)]
    assert learnt == own  # a curve of merged steps: what aggregated orders show every slot
    assert r3.summed and r3.result is None
    await world.client("r3").join("broker", SLOT_START + SLOT, SLOT, {"c1": 100}, {"c1": None})
    assert world.client("r3").counters["no_result_after_sum"] == 1


async def test_a_fill_beyond_a_representatives_own_share_is_refused_by_it(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each representative checks its own fill: the broker, which does not know
    # the curves, gives r1 the whole sell side (more than r1's pro rata share
    # of the aggregate at the price) and r3 nothing. r1 countersigns only up to
    # the ceiling it computed itself from its curve and the signed result.
    real = broker_side.fills

    def greedy(claims: dict[str, int], total: int, volume: int) -> dict[str, int]:
        out = real(claims, total, volume)
        if out.get("r1") and out.get("r3"):  # the sell side
            out = {m: (sum(out.values()) if m == "r1" else 0) for m in out}
        return out

    monkeypatch.setattr(broker_side, "fills", greedy)
    world = await s3_world(make_node, nursery, community)
    await join_all(world)
    await world.runner.close_shared(SLOT_START)
    await trio.testing.wait_all_tasks_blocked()
    r1 = world.client("r1")
    got, lo, hi = r1.filled(SLOT_START)["sell"]
    assert 0 < hi < 3623 and got == 0  # never beyond its own share: the one proposal was all of it...
    assert r1.client.counters["proposals_refused:INSUFFICIENT"] >= 1  # ...the over-sized proposal refused
    assert sum(r.terms.wh for r in world.receipts["r1"] if r.terms.seller_agent == "r1") == got
