"""Scenarios S2-S4 in the simulation: the daemon's role runners on simulated members.

:func:`setup_scenario` runs after the S1 community is built (households,
nodes, topology) and before the agents start:

* every node gets receipt-log replication (:class:`~p2pd.roles.replication.Replication`,
  its market writing through a :class:`~p2pd.roles.replication.LoggingWriter`);
* S2: two representatives (``rep0``, ``rep1``, role representative); member
  *i* delegates to ``rep{i % 2}`` (bounds: the tariffs, 10 kWh per slot) and
  reports each slot's net energy from its meter profile
  (:class:`~p2pd.components.client.DelegatingClient`). The representatives
  trade for their clients (:class:`~p2pd.components.representative.RepresentativeRunner`):
  among their own clients first, then with each other over S2 orders and takes;
* S3: the same, plus a broker (role broker, :class:`~p2pd.components.broker.BrokerRunner`)
  to which the representatives send aggregated orders;
* S4: a broker, and every member places its slots with it through
  :class:`~p2pd.components.client.BrokerTrader`, with its S1 agent for what
  the broker cannot take.

Representatives and the broker are extra nodes (no meter, not in the
accounts). In S3 a broker receipt names two representatives; for the
accounts it is split back into member-to-member trades with each
representative's fill ledger (:func:`member_receipts`), which is what the
representatives pass on to their clients.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from p2pd.components.broker import BrokerRunner
from p2pd.components.client import BrokerTrader, DelegatingClient, make_broker_trader
from p2pd.components.representative import RepresentativeRunner
from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.roles.agent import PerfectForesight
from p2pd.roles.broker import Broker, BrokerClient, agent_receipt_record
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.representative import Representative
from p2pd.sim.community import COMMUNITY, SimCommunity, SimNode, _metering_point
from protocol import AgentReceipt, Credential
from store import ReceiptRecord

REPRESENTATIVES = 2
BROKER = "broker"
MAX_WH_PER_SLOT = 10_000


@dataclass
class Scenario:
    """What :func:`setup_scenario` added, for the report and the attacks."""

    name: str
    replication: dict[str, Replication] = field(default_factory=dict)
    reps: dict[str, RepresentativeRunner] = field(default_factory=dict)
    clients: dict[str, DelegatingClient] = field(default_factory=dict)
    traders: dict[str, BrokerTrader] = field(default_factory=dict)
    broker: BrokerRunner | None = None
    broker_node: SimNode | None = None


def role_identity(com: SimCommunity, member_id: str, role: str) -> NodeIdentity:
    """Like :meth:`SimCommunity.identity`, for another role."""
    base = com.identity(member_id)
    keys = NodeKeys.generate()
    c = base.credential
    cred = Credential.issue(com.issuer, community=COMMUNITY, member_id=member_id, role=role,
                            metering_point=_metering_point(member_id), sign_pk=keys.signing.public,
                            noise_pk=keys.noise_public, valid_from=c.valid_from, valid_until=c.valid_until)
    return NodeIdentity(keys, cred)


def attach_replication(com: SimCommunity, sim: SimNode) -> Replication:
    """Replication on ``sim``'s node, its market writing through a LoggingWriter."""
    scenario = ensure_scenario(com)
    rep = scenario.replication.get(sim.member_id)
    if rep is None:
        rep = scenario.replication[sim.member_id] = Replication(sim.node, repo=sim.repo)
        sim.market.writer = LoggingWriter(sim.writer, rep)  # type: ignore[assignment]
    return rep


def ensure_scenario(com: SimCommunity) -> Scenario:
    if com.scenario is None:
        com.scenario = Scenario(com.cfg.scenario)
    assert isinstance(com.scenario, Scenario)
    return com.scenario


async def _role_node(com: SimCommunity, member_id: str, role: str) -> SimNode:
    sim = await com.add_node(role_identity(com, member_id, role), None)
    attach_replication(com, sim)
    return sim


async def setup_scenario(com: SimCommunity) -> Scenario:
    """Add the S2-S4 roles to a built community (see the module docstring)."""
    cfg = com.cfg
    scenario = ensure_scenario(com)
    for sim in com.nodes:
        attach_replication(com, sim)
    rules = com.rules
    if cfg.scenario in ("S3", "S4"):
        bsim = await _role_node(com, BROKER, "broker")
        # Wall-clock runs: sessions live in wall time, the market in simulated
        # time; the broker's gate and the representative's stamps are market time.
        broker = Broker(bsim.node, slot_len=rules.slot_len, gate_closure=rules.gate_closure, sign_timeout=10.0,
                        clock=com.market_clock)
        scenario.broker = BrokerRunner(broker, com.market_clock, bsim.market.writer)
        scenario.broker_node = bsim
        com.runners.append(scenario.broker.run)
    if cfg.scenario in ("S2", "S3"):
        await _setup_representatives(com, scenario)
    elif cfg.scenario == "S4":
        await _setup_brokered(com, scenario)
    return scenario


def _commit(sim: SimNode, com: SimCommunity) -> Any:
    async def commit(r: AgentReceipt) -> None:
        await sim.market.writer.commit(agent_receipt_record(r, int(com.market_clock.now())))

    return commit


async def _setup_representatives(com: SimCommunity, scenario: Scenario) -> None:
    rules = com.rules
    reps = [await _role_node(com, f"rep{i}", "representative") for i in range(REPRESENTATIVES)]
    for i, a in enumerate(reps):
        for b in reps[i + 1:]:
            await com.connect(a, b.member_id)
    for sim in reps:
        rep = Representative(sim.node, sim.market.writer, slot_len=rules.slot_len,
                             gate_closure=rules.gate_closure, ask=com.cfg.agent.ask, take_timeout=10.0,
                             clock=com.market_clock, random_bytes=sim.market.random_bytes)
        broker_client: BrokerClient | None = None
        if scenario.broker_node is not None:
            await com.connect(sim, scenario.broker_node.member_id)
            broker_client = BrokerClient(sim.node, commit=_commit(sim, com), submit_timeout=10.0)
        runner = RepresentativeRunner(rep, com.market_clock, broker=BROKER if broker_client else None,
                                      client=broker_client)
        scenario.reps[sim.member_id] = runner
        com.runners.append(runner.run)
    agent = com.cfg.agent
    for i, sim in enumerate(com.nodes):
        assert sim.household is not None
        rep_id = reps[i % len(reps)].member_id
        await com.connect(sim, rep_id)
        client = DelegatingClient(
            sim.node, rep_id, com.market_clock, PerfectForesight(sim.household.meter),
            slot_len=rules.slot_len, gate_closure=rules.gate_closure, max_wh_per_slot=MAX_WH_PER_SLOT,
            min_sell_price=agent.floor, max_buy_price=agent.ceiling, valid_seconds=7 * 86400)
        scenario.clients[sim.member_id] = client
        sim.agent = None  # the representative trades for it
        com.runners.append(client.run)


async def _setup_brokered(com: SimCommunity, scenario: Scenario) -> None:
    assert scenario.broker_node is not None
    for sim in com.nodes:
        assert sim.household is not None
        await com.connect(sim, BROKER)
        client = BrokerClient(sim.node, commit=_commit(sim, com), submit_timeout=10.0)
        trader = make_broker_trader(client, sim.market, BROKER, PerfectForesight(sim.household.meter),
                                    com.cfg.agent, dial=lambda member, src=sim: com.connect(src, member))
        scenario.traders[sim.member_id] = trader
        sim.agent = trader.agent  # started with the others; it sees only slots the broker cannot take
        com.runners.append(trader.run)


# --- after the run -----------------------------------------------------------------------------


def member_receipts(com: SimCommunity, receipts: list[ReceiptRecord]) -> list[ReceiptRecord]:
    """The receipts for the accounts: S3 broker trades between representatives split into
    member-to-member trades with the representatives' fill ledgers; others as they are."""
    scenario = com.scenario
    if not isinstance(scenario, Scenario) or not scenario.reps:
        return receipts
    fills: dict[tuple[bytes, str], list[tuple[str, int]]] = {}
    for runner in scenario.reps.values():
        for f in runner.ledger:
            fills.setdefault((f.trade_id, f.side), []).append((f.principal, f.wh))
    out = []
    for r in receipts:
        if r.seller not in scenario.reps and r.buyer not in scenario.reps:
            out.append(r)
            continue
        sells = list(fills.get((r.trade_id, "sell"), [])) if r.seller in scenario.reps else [(r.seller, r.wh)]
        buys = list(fills.get((r.trade_id, "buy"), [])) if r.buyer in scenario.reps else [(r.buyer, r.wh)]
        i = 0
        while sells and buys:
            (s, sw), (b, bw) = sells[0], buys[0]
            wh = min(sw, bw)
            tid = hashlib.blake2b(r.trade_id + i.to_bytes(4, "big"), digest_size=16).digest()
            out.append(replace(r, trade_id=tid, order_id=tid, seller=s, buyer=b, wh=wh, order_wh=wh))
            i += 1
            sells[0], buys[0] = (s, sw - wh), (b, bw - wh)
            if sells[0][1] == 0:
                sells.pop(0)
            if buys[0][1] == 0:
                buys.pop(0)
    return out


def roles_report(com: SimCommunity) -> dict[str, Any]:
    """The broker's and representatives' figures for the report."""
    scenario = com.scenario
    if not isinstance(scenario, Scenario):
        return {}
    out: dict[str, Any] = {}
    if scenario.broker is not None:
        b = scenario.broker.broker
        summaries = [s.summary for s in b.slots.values() if s.summary is not None]
        out["broker"] = {"slots_cleared": len(summaries), "orders": sum(s.orders for s in summaries),
                         "volume_wh": sum(s.volume_wh for s in summaries),
                         "matches_final": b.counters["matches_final"],
                         "matches_failed": b.counters["matches_failed"],
                         "slots_failed": scenario.broker.counters["slots_failed"]}
    if scenario.reps:
        out["representatives"] = {
            m: {"clients": len(r.rep.clients), "reports": r.rep.counters["reports"],
                "netted_wh": r.counters["netted_wh"], "offered_wh": r.counters["offered_wh"],
                "bought_wh": r.counters["bought_wh"], "sold_trades": r.rep.counters["trades_sold"],
                "submitted_wh": r.counters["submitted_wh"], "filled_wh": r.counters["filled_wh"]}
            for m, r in scenario.reps.items()}
    if scenario.traders:
        total: Counter[str] = Counter()
        for t in scenario.traders.values():
            total.update(t.counters)
            total.update({k: v for k, v in t.fallback.counters.items()})
        out["brokered"] = dict(total)
    logs = scenario.replication.values()
    out["receipt_logs"] = {"entries": sum(r.log.chain.seq for r in logs),
                           "replicas_held": sum(r.held for r in logs),
                           "log_entries_fetched": sum(r.counters["log_entries_fetched"] for r in logs),
                           "log_entries_verified": sum(r.counters["log_entries_verified"] for r in logs),
                           "equivocations_detected": sum(r.counters["equivocations_detected"] for r in logs),
                           "forks_detected": sum(r.counters["forks_detected"] for r in logs)}
    return out
