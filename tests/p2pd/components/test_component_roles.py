"""The S2-S4 roles as the daemon runs them: broker, representative and client runners.

In-process nodes over memory streams on one shared clock under
``autojump_clock``: the runners fire at their slot phases, and a test waits
by sleeping until a simulated time after the phase it checks (all message
passing happens at zero simulated time, so everything triggered before is
done). One test runs the components under ``run_daemon`` with temp configs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, eventually, link, node_identity

from p2pd.clock import TrioWallClock, trio_deadline
from p2pd.components import SECTIONS
from p2pd.components.broker import BrokerRunner, broker_book, broker_status
from p2pd.components.client import BrokerTrader, DelegatingClient, make_broker_trader, trading_mode
from p2pd.components.representative import RepresentativeRunner
from p2pd.config import ConfigError, parse_config
from p2pd.net.node import Node
from p2pd.roles.agent import AgentConfig
from p2pd.roles.broker import Broker, BrokerClient, agent_receipt_record
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.representative import Representative
from p2pd.roles.slot_phases import next_event
from p2pd.roles.trading import Market, MarketRules
from protocol.delegation import AgentReceipt
from store import MemoryRepository

SLOT, GATE = 900, 300
FIRST = (int(NOW) // SLOT + 3) * SLOT  # the first slot every runner reaches in time


class Fixed:
    """A forecaster with one net value per slot (the same for every slot)."""

    def __init__(self, net: int) -> None:
        self.net = net

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        return self.net


class World:
    """Nodes on one clock, each with a store, a writer and receipt replication."""

    def __init__(self, community: Community, nursery: trio.Nursery) -> None:
        self.community = community
        self.nursery = nursery
        self.clock = TrioWallClock(NOW)
        self.repos: dict[str, MemoryRepository] = {}
        self.writers: dict[str, LoggingWriter] = {}
        self.replication: dict[str, Replication] = {}

    async def node(self, name: str, role: str = "prosumer") -> Node:
        node = Node(node_identity(self.community.member(name, role=role)), self.community.policy(),
                    self.nursery, clock=self.clock)
        self.repos[name] = repo = MemoryRepository()
        inner = ReceiptWriter(repo)
        await self.nursery.start(inner.run)
        self.replication[name] = rep = Replication(node, replicas=2)
        self.writers[name] = LoggingWriter(inner, rep)
        return node

    def market(self, node: Node) -> Market:
        return Market(node, self.repos[node.member_id], self.writers[node.member_id],  # type: ignore[arg-type]
                      rules=MarketRules(take_timeout=2.0), clock=self.clock)

    def commit(self, name: str) -> Callable[[AgentReceipt], Awaitable[None]]:
        async def commit(r: AgentReceipt) -> None:
            await self.writers[name].commit(agent_receipt_record(r, int(self.clock.now())))

        return commit

    async def until(self, t: float) -> None:
        await trio.sleep_until(trio_deadline(self.clock, t))

    def agent_receipts(self, name: str) -> list[AgentReceipt]:
        return [AgentReceipt.decode(r.encoded) for r in self.repos[name].receipts() if r.encoded[:1] == b"\x96"]


@pytest.fixture
def world(community: Community, nursery: trio.Nursery) -> World:
    return World(community, nursery)


def test_phases_fire_in_time_order_at_their_offsets() -> None:
    phases = {"offer": 600, "buy": 300}
    t, slot, name = next_event(FIRST - GATE - 600 - 1, SLOT, GATE, phases)
    assert (t, slot, name) == (FIRST - GATE - 600, FIRST, "offer")
    assert next_event(t, SLOT, GATE, phases) == (FIRST - GATE - 300, FIRST, "buy")
    assert next_event(FIRST - GATE - 300, SLOT, GATE, phases) == (FIRST + SLOT - GATE - 600, FIRST + SLOT, "offer")


async def s2_world(world: World, broker: str | None = None,
                   ) -> tuple[dict[str, RepresentativeRunner], dict[str, DelegatingClient]]:
    """Two representatives with three clients each; S3 if ``broker`` names a linked broker node."""
    runners: dict[str, RepresentativeRunner] = {}
    for name in ("repA", "repB"):
        node = await world.node(name, "representative")
        rep = Representative(node, world.writers[name], take_timeout=2.0)  # type: ignore[arg-type]
        client = BrokerClient(node, commit=world.commit(name)) if broker else None
        runners[name] = RepresentativeRunner(rep, world.clock, broker=broker, client=client)
    await link(runners["repA"].rep.node, runners["repB"].rep.node)
    # repA: c0 +1200, c1 +800, c2 -600.  repB: c3 +1000, c4 -1500, c5 -900.
    plan = {"c0": 1200, "c1": 800, "c2": -600, "c3": 1000, "c4": -1500, "c5": -900}
    clients = {}
    for i, (name, net) in enumerate(plan.items()):
        rep = "repA" if i < 3 else "repB"
        node = await world.node(name)
        await link(node, runners[rep].rep.node)
        clients[name] = DelegatingClient(node, rep, world.clock, Fixed(net), slot_len=SLOT, gate_closure=GATE,
                                         max_wh_per_slot=2000, min_sell_price=60_000, max_buy_price=120_000,
                                         valid_seconds=86400)
        await world.nursery.start(clients[name].run)
    for r in runners.values():
        await world.nursery.start(r.run)
    return runners, clients


def traded(world: World, names: list[str], slot: int = FIRST) -> dict[str, int]:
    """Net Wh per principal over the slot's receipts (S1 or v2) the nodes store (+ sold, - bought)."""
    seen = {r.trade_id: r for n in names for r in world.repos[n].receipts() if r.slot_start == slot}
    out: dict[str, int] = {}
    for r in seen.values():
        out[r.seller] = out.get(r.seller, 0) + r.wh
        out[r.buyer] = out.get(r.buyer, 0) - r.wh
    return out


async def test_s2_clients_delegate_and_report_and_representatives_trade_for_them(
        world: World, autojump_clock: Any) -> None:
    runners, clients = await s2_world(world)
    a, b = runners["repA"], runners["repB"]
    await world.until(FIRST - GATE)
    assert a.rep.clients == ["c0", "c1", "c2"] and b.rep.clients == ["c3", "c4", "c5"]
    assert all(c.counters["reports_sent"] >= 1 for c in clients.values())
    # repA nets c2's 600 Wh against c0 internally; the 1400 Wh left (c0 600, c1 800)
    # go to repB's c4/c5; repB nets c3's 1000 Wh with its own buyers first.
    receipts = {r.terms.trade_id: r for n in ("repA", "repB") for r in world.agent_receipts(n)
                if r.terms.slot_start == FIRST}
    netted = {ag: sum(r.terms.wh for r in receipts.values() if r.terms.seller_agent == r.terms.buyer_agent == ag)
              for ag in ("repA", "repB")}
    assert netted == {"repA": 600, "repB": 1000}
    net = traded(world, ["repA", "repB"])
    assert net == {"c0": 1200, "c1": 800, "c2": -600, "c3": 1000, "c4": -1500, "c5": -900}
    for r in receipts.values():
        assert r.seller_delegation is not None and r.buyer_delegation is not None
        assert 60_000 <= r.terms.price <= 120_000
    # The next slot: the same again, and never more than each report.
    await world.until(FIRST + SLOT - GATE)
    assert traded(world, ["repA", "repB"], FIRST + SLOT) == net
    # Every node logged what it committed and replicated it.
    assert world.replication["repA"].log.chain.seq >= 4
    status = a.status()
    assert status["scenario"] == "S2" and [c["member"] for c in status["clients"]] == ["c0", "c1", "c2"]


async def test_s3_aggregated_orders_cleared_by_the_broker_are_split_among_clients(
        world: World, autojump_clock: Any) -> None:
    bnode = await world.node("broker", "broker")
    broker = BrokerRunner(Broker(bnode, sign_timeout=2.0), world.clock, world.writers["broker"])
    await world.nursery.start(broker.run)
    runners, _ = await s2_world(world, broker="broker")
    for r in runners.values():
        await link(r.rep.node, bnode)
    await world.until(FIRST - GATE + 60)
    summary = broker.broker.slots[FIRST].summary
    assert summary is not None and broker.counters["slots_cleared"] >= 1
    # After netting, repA sells 1400 (c0 600, c1 800) and repB buys 1400 of its 1400 left.
    assert summary.volume_wh == 1400
    book = broker_book(broker, FIRST)
    assert {o["principal"] for o in book["orders"]} == {"repA", "repB"}  # no household in the book
    assert broker_status(broker)["last"]["volume_wh"] == 1400
    a, b = runners["repA"], runners["repB"]
    for runner in (a, b):
        fills = [f for f in runner.ledger if f.slot_start == FIRST]
        assert sum(f.wh for f in fills) == 1400
    shares: dict[str, int] = {}
    for f in a.ledger + b.ledger:
        if f.slot_start == FIRST:
            shares[f.principal] = shares.get(f.principal, 0) + f.wh
    assert shares["c0"] == 600 and shares["c1"] == 800 and shares["c4"] + shares["c5"] == 1400
    # With the internal trades, every client got exactly its report, nobody more.
    net = traded(world, ["repA", "repB"])
    assert (net.pop("repA"), net.pop("repB")) == (1400, -1400)  # the aggregated trade
    for p, wh in shares.items():
        net[p] = net.get(p, 0) + (wh if p in ("c0", "c1") else -wh)
    assert net == {"c0": 1200, "c1": 800, "c2": -600, "c3": 1000, "c4": -1500, "c5": -900}
    # The broker logged the receipts it brokered, like every party.
    cleared = sum(len(sl.receipts) for sl in broker.broker.slots.values())
    assert world.replication["broker"].log.chain.seq == cleared > 0


S3_NET = {"c0": 1200, "c1": 800, "c2": -600, "c3": 1000, "c4": -1500, "c5": -900}


def client_net(world: World, runners: dict[str, RepresentativeRunner], slot: int) -> dict[str, int]:
    """Net Wh per client in a slot: receipts naming clients, plus their shares of broker fills."""
    net = traded(world, ["repA", "repB"], slot)
    net.pop("repA", None), net.pop("repB", None)  # broker trades: counted by the fill ledgers
    for runner in runners.values():
        for f in runner.ledger:
            if f.slot_start == slot:
                net[f.principal] = net.get(f.principal, 0) + (f.wh if f.side == "sell" else -f.wh)
    return net


async def test_s3_broker_dying_before_delivery_loses_nothing_and_later_slots_trade_directly(
        world: World, autojump_clock: Any) -> None:
    # Issue 12.6: S4 fell back when its broker died, S3 did not: the representatives
    # kept submitting to a dead broker and their clients' energy went untraded.
    bnode = await world.node("broker", "broker")
    broker = BrokerRunner(Broker(bnode, sign_timeout=2.0), world.clock, world.writers["broker"])

    async def crash(receipt: AgentReceipt) -> None:  # both sides signed: die before any delivery
        await bnode.aclose()

    broker.broker.before_delivery.append(crash)
    await world.nursery.start(broker.run)
    runners, _ = await s2_world(world, broker="broker")
    for r in runners.values():
        await link(r.rep.node, bnode)
    await world.until(FIRST - GATE + 60)
    a, b = runners["repA"], runners["repB"]
    assert not a.broker_up and not b.broker_up
    # The countersigned match became a receipt on both sides, finished directly...
    (r,) = [x for x in world.agent_receipts("repA") if x.terms.broker]
    assert [x.encode() for x in world.agent_receipts("repB") if x.terms.broker] == [r.encode()]
    assert a.client is not None and a.client.counters["finished_directly"] == 1
    assert client_net(world, runners, FIRST) == S3_NET  # ...and split among the clients.
    # The next slot is traded directly between the representatives, as in S2.
    await world.until(FIRST + SLOT - GATE)
    assert client_net(world, runners, FIRST + SLOT) == S3_NET
    direct = [x for x in world.agent_receipts("repB") if x.terms.slot_start == FIRST + SLOT
              and x.terms.seller_agent == "repA"]
    assert sum(x.terms.wh for x in direct) == 1400 and not any(x.terms.broker for x in direct)
    assert FIRST + SLOT in a.direct and a.status()["broker_up"] is False


async def test_s3_without_a_broker_session_a_failed_submission_trades_the_slot_directly(
        world: World, autojump_clock: Any) -> None:
    bnode = await world.node("broker", "broker")  # never linked: no session with it
    assert bnode.member_id == "broker"
    runners, _ = await s2_world(world, broker="broker")
    await world.until(FIRST - GATE)
    a = runners["repA"]
    assert a.counters["submit_failed:NOT_FOUND"] >= 1 and a.counters["slots_direct"] == 1
    assert client_net(world, runners, FIRST) == S3_NET


async def test_s4_orders_go_to_the_broker_and_fall_back_to_s1_when_it_dies(
        world: World, autojump_clock: Any) -> None:
    bnode = await world.node("broker", "broker")
    broker = BrokerRunner(Broker(bnode, sign_timeout=2.0), world.clock, world.writers["broker"])
    await world.nursery.start(broker.run)
    traders: dict[str, BrokerTrader] = {}
    plan = {"s0": 1000, "s1": 500, "b0": -800, "b1": -600}
    for name, net in plan.items():
        node = await world.node(name)
        await link(node, bnode)
        client = BrokerClient(node, commit=world.commit(name), submit_timeout=2.0)
        traders[name] = t = make_broker_trader(client, world.market(node), "broker", Fixed(net),
                                               AgentConfig(lead_slots=2))
        await world.nursery.start(t.run)
        assert t.agent is not None
        await world.nursery.start(t.agent.run)
    names = list(plan)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            await link(traders[x].client.node, traders[y].client.node)
    await world.until(FIRST - GATE + 60)
    assert broker.broker.slots[FIRST].summary is not None
    assert broker.broker.slots[FIRST].summary.volume_wh == 1400  # type: ignore[union-attr]
    first = traded(world, names)
    assert sum(v for v in first.values() if v > 0) == 1400 and first["b0"] == -800 and first["b1"] == -600
    # The broker dies; the next slot goes over S1 with the same agents.
    await bnode.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert not any(t.fallback.broker_up for t in traders.values())
    await world.until(FIRST + SLOT - GATE)
    second = traded(world, names, FIRST + SLOT)
    assert sum(v for v in second.values() if v > 0) == 1400, second
    assert all(second[k] >= 0 for k in ("s0", "s1")) and all(second[k] <= 0 for k in ("b0", "b1"))
    assert all(t.counters["slots_direct"] >= 1 for t in traders.values())


def test_role_sections_name_their_keys() -> None:
    base: dict[str, Any] = {"community": {"id": "c", "issuers": ["ab" * 32]}}

    def parse(data: dict[str, Any]) -> Any:
        return parse_config(data, sections=SECTIONS)

    cfg = parse(base)
    assert trading_mode(cfg, "prosumer") == "direct"
    assert trading_mode(cfg, "broker") == "broker"
    assert trading_mode(parse({**base, "broker": {"member": "b"}}), "prosumer") == "brokered"
    delegated = parse({**base, "delegation": {"representative": "rep", "max_wh_per_slot": 500}})
    assert trading_mode(delegated, "prosumer") == "delegated"
    with pytest.raises(ConfigError, match=r"^\[delegation\].representative: a representative does not"):
        trading_mode(delegated, "representative")
    both = parse({**base, "delegation": {"representative": "rep"}, "broker": {"member": "b"}})
    with pytest.raises(ConfigError, match="choose one"):
        trading_mode(both, "prosumer")
    for section, body, message in (
        ("broker", {"member": "no spaces"}, "[broker].member: expected a member id"),
        ("delegation", {"max_wh_per_slot": 0}, "[delegation].max_wh_per_slot: expected an integer"),
        ("representative", {"ask": -1}, "[representative].ask: expected an integer"),
        ("replication", {"replicas": 99}, "[replication].replicas: expected an integer 0..16"),
        ("representative", {"brokr": "x"}, "[representative].brokr: unknown key"),
    ):
        with pytest.raises(ConfigError) as info:
            parse({**base, section: body})
        assert str(info.value).startswith(message), str(info.value)


# --- under run_daemon ---------------------------------------------------------------------


async def test_the_credential_role_decides_what_the_daemon_runs() -> None:
    import tempfile
    import time
    from pathlib import Path

    from p2pd.config import load_config
    from p2pd.daemon import run_daemon
    from p2pd.net.identity import write_credential, write_node_keys
    from protocol import Credential, SigningKey

    issuer = SigningKey.generate()
    now = int(time.time())

    def config(base: Path, name: str, role: str, extra: str = "") -> Any:
        d = base / name
        keys = write_node_keys(d / "state" / "keys")
        write_credential(d / "state" / "keys" / "credential", Credential.issue(
            issuer, community="dt", member_id=name, role=role, metering_point=f"EAN{name}",
            sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=now - 3600,
            valid_until=now + 86400))
        (d / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "warning"
[community]
id = "dt"
issuers = ["{issuer.public.hex()}"]
[p2p]
host = "127.0.0.1"
port = 0
[store]
url = "memory://"
[meter]
driver = "none"
[settlement]
enabled = false
{extra}
""")
        return load_config(d / "p2pd.toml", sections=SECTIONS)

    with tempfile.TemporaryDirectory(prefix="p2pdr", dir="/tmp") as tmp:
        base = Path(tmp)
        cfgs = [config(base, "broker", "broker"), config(base, "rep", "representative"),
                config(base, "s4", "prosumer", '[broker]\nmember = "broker"'),
                config(base, "cl", "prosumer", '[delegation]\nrepresentative = "rep"\nmax_wh_per_slot = 500')]
        async with trio.open_nursery() as nursery:
            broker, rep, s4, cl = [await nursery.start(run_daemon, c) for c in cfgs]
            try:
                for a, b in ((s4, broker), (cl, rep), (rep, broker)):
                    port = int(b.listen_addresses[0].rsplit(":", 1)[1])
                    await a.control.call("peers.connect", {"host": "127.0.0.1", "port": port})
                assert "broker" in broker.services and "representative" not in broker.services
                assert "representative" in rep.services and "client" not in rep.services
                assert s4.services["client"].status()["mode"] == "brokered" and "agent" not in s4.services
                assert cl.services["client"].status()["mode"] == "delegated" and "agent" not in cl.services
                assert all("replication" in c.services for c in (broker, rep, s4, cl))
                # The client's delegation reaches its representative (sent when the session opened).
                # Nothing announces its arrival: look once the tasks handling it have run.
                runner = rep.services["representative"]
                await eventually(lambda: runner.rep.clients == ["cl"], within=10)
                st = await rep.control.call("representative.status")
                assert st["scenario"] == "S2" and st["clients"][0]["max_wh_per_slot"] == 500
                cs = await cl.control.call("client.status")
                assert cs["connected"] and cs["delegation"]["max_wh_per_slot"] == 500
                bs = await broker.control.call("broker.status")
                assert bs["slots_cleared"] == 0 and bs["open_slots"] == []
                with pytest.raises(Exception, match="no orders"):
                    await broker.control.call("broker.book", {"slot_start": 900})
                log = await s4.control.call("receipts.log")
                assert log["seq"] == 0 and log["equivocators"] == [] and log["following"] == {}
                fetched = await s4.control.call("receipts.fetch_log", {"member": "broker"})
                assert fetched["member"] == "broker" and fetched["verified"] == fetched["fetched"] == 0
                assert (await s4.control.call("receipts.log"))["following"] == {
                    "broker": {"verified": 0, "latest_head": 0}}
                status = await broker.control.call("status")
                assert "broker" in status and "replication" in status
            finally:
                for c in (broker, rep, s4, cl):
                    c.stop()



async def test_a_representative_whose_disk_is_full_keeps_running_and_nets_again_later(
        world: World, autojump_clock: Any) -> None:
    """Issue 12: a netting receipt the store refuses stops netting for that slot, not the runner."""
    from store import StorageUnavailable

    runners, _clients = await s2_world(world)
    repo = world.repos["repA"]
    commit = repo.commit_receipts

    def full(batch: Any) -> Any:
        raise StorageUnavailable("database or disk is full")

    repo.commit_receipts = full  # type: ignore[method-assign]
    await world.until(FIRST - GATE)
    assert runners["repA"].counters["netting_unstored"] >= 1
    assert not [r for r in world.agent_receipts("repA") if r.terms.slot_start == FIRST]
    repo.commit_receipts = commit  # type: ignore[method-assign]
    await world.until(FIRST + SLOT - GATE)
    netted = [r for r in world.agent_receipts("repA")
              if r.terms.slot_start == FIRST + SLOT and r.terms.seller_agent == r.terms.buyer_agent == "repA"]
    assert sum(r.terms.wh for r in netted) == 600
