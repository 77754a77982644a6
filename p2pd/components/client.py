"""Daemon component "client": a prosumer that trades through a representative (S2, S3) or a broker (S4).

``[delegation] representative = "rep-id"`` (:class:`DelegatingClient`): the
node signs a :class:`~protocol.delegation.Delegation` with the configured
bounds (Wh per slot, price floor and ceiling, ``valid_seconds`` from now),
gossips it and sends it again whenever a session with the representative
opens; a day before it ends a new one is signed. For every slot,
``report_before_gate`` seconds before its gate closure, the node forecasts
its net energy and sends it as a signed MeterReport to the representative,
and to nobody else. The automatic agent is off: the representative trades.

``[broker] member = "broker-id"`` (:class:`BrokerTrader`, S4): for every
slot, ``place_before_gate`` seconds before gate closure, the forecast surplus
or need goes to the broker as an order at the agent's ask or bid, through
:class:`~p2pd.roles.fallback.Fallback`. While the broker is unreachable, and for
slots it could not take, the S1 agent trades instead (it sees the forecast
of those slots only); when the broker's session closes, matches both sides
signed are finished directly and unsold surplus is re-offered over S1,
while unbought need is left to the agent, which takes offers (a bid would
wait for sellers that already offered). A new session with the broker puts
later slots back on the broker.

Control method ``client.status``; ``status`` gets a ``client`` object.

Owns ``[delegation]`` (:data:`DELEGATION`) and decides how a prosumer trades
(:func:`trading_mode`, from ``[delegation]`` and ``[broker]``), which the
agent component asks too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.clock import Clock
from p2pd.components.broker import BROKER
from p2pd.components.forecasting import NoMeter, feed_forecaster
from p2pd.components.status import extend_status
from p2pd.components.trading import TRADING, agent_config
from p2pd.config import DAY, Config, Section, Table
from p2pd.errors import ConfigError, NotConnected, P2pdError, PeerGone, TradeError
from p2pd.net.identity import NodeIdentity
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.agent import Agent, AgentConfig, Forecaster, ReadingsForecaster, SlotPlan
from p2pd.roles.broker import BrokerClient, agent_receipt_record
from p2pd.roles.fallback import Fallback
from p2pd.roles.representative import HOPS, delegate, send_report
from p2pd.roles.slot_phases import serve_slot_phases
from protocol import MAX_WH, AgentReceipt, Delegation, DelegationGossip, Reason

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


# --- [delegation], and which way a prosumer trades ---------------------------------------


@dataclass(frozen=True)
class DelegationConfig:
    """``[delegation]``: a prosumer lets its representative trade for it (S2, S3)."""

    representative: str | None = None
    """The representative's member id. Unset: no delegation."""
    max_wh_per_slot: int = 10_000
    min_sell_price: int | None = None
    """Default: [tariffs].export_price."""
    max_buy_price: int | None = None
    """Default: [tariffs].import_price."""
    valid_seconds: int = 30 * DAY
    """Each delegation signed is valid this long; a new one is signed a day before it ends."""
    report_before_gate: int = 900
    """Send each slot's meter report this many seconds before gate closure."""


def parse_delegation(t: Table) -> DelegationConfig:
    d = DelegationConfig()
    return DelegationConfig(
        representative=t.member("representative"),
        # Signed into the Delegation: the wire's bounds apply.
        max_wh_per_slot=t.integer("max_wh_per_slot", d.max_wh_per_slot, 1, MAX_WH),
        min_sell_price=t.price("min_sell_price"), max_buy_price=t.price("max_buy_price"),
        valid_seconds=t.integer("valid_seconds", d.valid_seconds, 3600, 366 * DAY),
        report_before_gate=t.integer("report_before_gate", d.report_before_gate, 1, DAY),
    )


DELEGATION = Section("delegation", parse_delegation)


def trading_mode(config: Config, role: str) -> str:
    """What this node runs (docs/configuration.md, "Roles"): one of

    ``"broker"`` (role broker), ``"representative"`` (role representative;
    S3 if ``[representative] broker`` is set), ``"delegated"`` (a prosumer
    with ``[delegation] representative``: its representative trades, the
    agent is off), ``"brokered"`` (a prosumer with ``[broker] member``: S4,
    the agent only trades what the broker cannot), or ``"direct"`` (S1).
    Raises :class:`ConfigError` for a combination that makes no sense.
    """
    delegation = DELEGATION.get(config)
    broker = BROKER.get(config)
    if role in ("broker", "representative"):
        if delegation.representative is not None:
            raise ConfigError(f"[delegation].representative: a {role} does not delegate")
        return role
    if delegation.representative is not None and broker.member is not None:
        raise ConfigError("[delegation].representative and [broker].member: choose one "
                          "(a client's representative deals with the broker)")
    if delegation.representative is not None:
        return "delegated"
    return "brokered" if broker.member is not None else "direct"


# --- S2, S3: delegation and meter reports ----------------------------------------------


class DelegatingClient:
    """Keeps a delegation to ``representative`` and reports each slot's forecast net energy."""

    def __init__(self, node: Node, representative: str, clock: Clock, forecaster: Forecaster, *,
                 slot_len: int, gate_closure: int, max_wh_per_slot: int, min_sell_price: int,
                 max_buy_price: int, valid_seconds: int = 30 * DAY, report_before_gate: int = 900) -> None:
        self.node = node
        self.representative = representative
        self.clock = clock
        self.forecaster = forecaster
        self.slot_len = slot_len
        self.gate_closure = gate_closure
        self.bounds = {"max_wh_per_slot": max_wh_per_slot, "min_sell_price": min_sell_price,
                       "max_buy_price": max_buy_price}
        self.valid_seconds = valid_seconds
        self.report_before_gate = report_before_gate
        self.delegation: Delegation | None = None
        self.reported: dict[int, int] = {}  # slot -> net Wh reported
        self.counters: Counter[str] = Counter()
        node.on_open.append(self._on_open)

    async def ensure_delegation(self) -> Delegation:
        """The current delegation; signs (and gossips) a new one near the end of the old."""
        now = int(self.clock.now())
        d = self.delegation
        if d is None or d.valid_until - now < min(DAY, self.valid_seconds // 2):
            b = self.bounds
            d = await delegate(self.node, self.representative, valid_from=now,
                               valid_until=now + self.valid_seconds, max_wh_per_slot=b["max_wh_per_slot"],
                               min_sell_price=b["min_sell_price"], max_buy_price=b["max_buy_price"])
            self.delegation = d
            self.counters["delegations_signed"] += 1
        return d

    async def _on_open(self, conn: PeerConnection) -> None:
        if self.delegation is not None and conn.peer is not None and conn.peer.member_id == self.representative:
            try:
                await conn.send(DelegationGossip(self.delegation, self.node.identity.credential, HOPS))
            except PeerGone:
                pass

    async def report(self, slot_start: int) -> int | None:
        """Send the slot's forecast net energy to the representative; None if it was not sent."""
        await self.ensure_delegation()
        net = self.forecaster.net_wh(slot_start, self.slot_len)
        if net == 0:
            return None
        try:
            await send_report(self.node, self.representative, slot_start, self.slot_len, net)
        except (NotConnected, PeerGone):
            self.counters["reports_unsent"] += 1
            return None
        self.reported[slot_start] = net
        self.counters["reports_sent"] += 1
        for old in [s for s in self.reported if s < slot_start - DAY]:
            del self.reported[old]
        return net

    async def act(self, phase: str, slot_start: int) -> None:
        await self.report(slot_start)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.ensure_delegation()
        await serve_slot_phases(self.clock, self.slot_len, self.gate_closure,
                                {"report": self.report_before_gate}, self.act, task_status=task_status)

    def status(self) -> dict[str, Any]:
        d = self.delegation
        return {"mode": "delegated", "representative": self.representative,
                "connected": self.representative in self.node.sessions,
                "delegation": None if d is None else {
                    "delegation_id": d.delegation_id.hex(), "valid_from": d.valid_from,
                    "valid_until": d.valid_until, **self.bounds},
                "counters": dict(self.counters)}


# --- S4: the broker first, S1 when it is gone ----------------------------------------------


class RoleFallback(Fallback):
    """:class:`Fallback` that leaves unbought need to the agent instead of posting bids,
    and first dials (``dial``, optional) the other side of every match we signed."""

    dial: Callable[[str], Awaitable[Any]] | None = None

    async def broker_lost(self) -> int:
        me = self.client.node.member_id
        for prop, _ in list(self.client.pending.values()):
            t = prop.terms
            other = t.buyer_agent if t.seller_agent == me else t.seller_agent
            if other not in self.client.node.sessions and self.dial is not None:
                try:
                    await self.dial(other)
                except (P2pdError, OSError):
                    self.counters["dial_failed"] += 1
        for own in self.client.own.values():
            if own.order.side == "buy" and own.remaining > 0:
                self.counters["need_released_wh"] += own.remaining
                own.remaining = 0
        return await super().broker_lost()


class GatedForecaster:
    """The agent's view: the forecast for slots it may trade, zero for the broker's."""

    def __init__(self, inner: Forecaster, allow: Callable[[int], bool]) -> None:
        self.inner = inner
        self.allow = allow

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        return self.inner.net_wh(slot_start, slot_len) if self.allow(slot_start) else 0


class BrokerTrader:
    """A prosumer's S4 trading: each slot to the broker, S1 by ``agent`` when it cannot."""

    def __init__(self, fallback: RoleFallback, forecaster: Forecaster, agent_cfg: AgentConfig, *,
                 place_before_gate: int = 300) -> None:
        self.fallback = fallback
        self.client = fallback.client
        self.market = fallback.market
        self.forecaster = forecaster
        self.cfg = agent_cfg
        self.place_before_gate = place_before_gate
        self.direct: set[int] = set()
        self.placed: dict[int, str] = {}  # slot -> side placed with the broker
        self.counters: Counter[str] = Counter()
        self.agent: Agent | None = None
        self.client.on_receipt.append(self._on_receipt)
        self.client.node.on_open.append(self._on_open)

    def attach_agent(self, agent: Agent) -> None:
        """The S1 agent to use; its forecaster must be :meth:`gated` (see :func:`make_broker_trader`)."""
        self.agent = agent

    def gated(self, forecaster: Forecaster) -> GatedForecaster:
        return GatedForecaster(forecaster, lambda s: s in self.direct or not self.fallback.broker_up)

    def _plan(self, slot_start: int) -> SlotPlan:
        assert self.agent is not None
        return self.agent.plans.setdefault(slot_start, SlotPlan())

    async def _on_open(self, conn: PeerConnection) -> None:
        if conn.peer is not None and conn.peer.member_id == self.fallback.broker and not self.fallback.broker_up:
            self.fallback.broker_up = True
            self.counters["broker_back"] += 1

    async def _on_receipt(self, receipt: AgentReceipt) -> None:
        t = receipt.terms
        me = self.client.node.member_id
        plan = self._plan(t.slot_start)
        if t.seller == me:
            plan.sold_wh += t.wh
        else:
            plan.bought_wh += t.wh
        self.counters["broker_trades"] += 1
        self.counters["broker_wh"] += t.wh

    async def place(self, slot_start: int) -> str | None:
        """Send the slot's forecast to the broker; returns "broker", "direct" or None (nothing to do)."""
        if slot_start in self.direct or slot_start in self.placed:
            return None
        net = self.forecaster.net_wh(slot_start, self.market.rules.slot_len)
        if abs(net) < self.cfg.min_wh:
            return None
        if not self.fallback.broker_up:
            self.direct.add(slot_start)
            self.counters["slots_direct"] += 1
            return "direct"
        side = "sell" if net > 0 else "buy"
        price = self.cfg.ask if side == "sell" else self.cfg.bid
        try:
            where = await self.fallback.place(side, slot_start, abs(net), price)
        except TradeError as exc:
            reason = exc.reason.name if isinstance(exc.reason, Reason) else str(exc.reason)
            self.counters[f"place_failed:{reason}"] += 1
            self.direct.add(slot_start)
            return "direct"
        plan = self._plan(slot_start)
        if where == "broker":
            self.placed[slot_start] = side
            plan.offer_posted = side == "sell"  # after a crash Fallback re-offers the rest itself
            self.counters["slots_broker"] += 1
        else:  # Fallback posted it over S1; the agent may fill bids or take offers for the rest
            self.direct.add(slot_start)
            plan.offer_posted = side == "sell"
            plan.bid_posted = side == "buy"
            self.counters["slots_direct"] += 1
        return where

    async def act(self, phase: str, slot_start: int) -> None:
        await self.place(slot_start)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Place every slot on time; the agent runs alongside (started by the caller)."""
        await serve_slot_phases(self.market.clock, self.market.rules.slot_len, self.market.rules.gate_closure,
                                {"place": self.place_before_gate}, self.act, task_status=task_status)

    def status(self) -> dict[str, Any]:
        return {"mode": "brokered", "broker": self.fallback.broker, "broker_up": self.fallback.broker_up,
                "counters": dict(self.counters) | dict(self.fallback.counters) | dict(self.client.counters)}


def make_broker_trader(client: BrokerClient, market: Any, broker: str, forecaster: Forecaster,
                       agent_cfg: AgentConfig, *, place_before_gate: int = 300,
                       **agent_kwargs: Any) -> BrokerTrader:
    """A :class:`BrokerTrader` with its S1 agent (not started: run ``trader.agent.run`` too)."""
    fallback = RoleFallback(client, market, broker)
    fallback.dial = agent_kwargs.get("dial")
    trader = BrokerTrader(fallback, forecaster, agent_cfg, place_before_gate=place_before_gate)
    trader.attach_agent(Agent(market, trader.gated(forecaster), agent_cfg, **agent_kwargs))
    return trader


# --- the component ---------------------------------------------------------------------------


class ClientComponent:
    name = "client"
    section = DELEGATION

    def check(self, config: Config, identity: NodeIdentity) -> None:
        """[delegation] and [broker] make sense for the credential's role."""
        trading_mode(config, identity.credential.role)

    async def start(self, ctx: DaemonContext) -> None:
        mode = trading_mode(ctx.config, ctx.identity.credential.role)
        market = ctx.services.get("market")
        if mode not in ("delegated", "brokered") or market is None:
            return
        forecaster = ReadingsForecaster(market.clock)
        await ctx.nursery.start(feed_forecaster, ctx, forecaster)
        community = ctx.config.community
        runner: DelegatingClient | BrokerTrader
        if mode == "delegated":
            dcfg = DELEGATION.get(ctx.config)
            assert dcfg.representative is not None
            runner = DelegatingClient(
                ctx.node, dcfg.representative, market.clock, forecaster, slot_len=community.slot_seconds,
                gate_closure=community.gate_closure_seconds, max_wh_per_slot=dcfg.max_wh_per_slot,
                min_sell_price=(dcfg.min_sell_price if dcfg.min_sell_price is not None
                                else ctx.config.tariffs.export_price),
                max_buy_price=(dcfg.max_buy_price if dcfg.max_buy_price is not None
                               else ctx.config.tariffs.import_price),
                valid_seconds=dcfg.valid_seconds, report_before_gate=dcfg.report_before_gate)
            await ctx.nursery.start(runner.run)
        else:
            bcfg = BROKER.get(ctx.config)
            assert bcfg.member is not None
            writer = ctx.services["writer"]

            async def commit(r: AgentReceipt) -> None:
                await writer.commit(agent_receipt_record(r, int(market.clock.now())))

            client = BrokerClient(ctx.node, commit=commit, submit_timeout=bcfg.submit_timeout)
            trading = TRADING.get(ctx.config)
            runner = make_broker_trader(client, market, bcfg.member, forecaster,
                                        agent_config(ctx.config, trading), place_before_gate=bcfg.place_before_gate,
                                        meter=ctx.meter or NoMeter(),
                                        dial=getattr(ctx.discovery, "dial_member", None))
            await ctx.nursery.start(runner.run)
            assert runner.agent is not None
            await ctx.nursery.start(runner.agent.run)
        ctx.services["client"] = runner
        ctx.control.register("client.status", runner.status,
                             summary="how this prosumer trades: its representative or broker, and counters")
        extend_status(ctx.control, "client", runner.status)
        log.info("client_ready", mode=mode)


DAEMON_COMPONENT = ClientComponent()
