"""Daemon component "representative": trading for clients, on a node whose role is representative.

:class:`RepresentativeRunner` drives a :class:`~p2pd.roles.representative.Representative`
per slot, at fixed times before the slot's gate closure (market time):

S2 (no ``[representative] broker``):
  * ``offer`` (2/3 of a slot before the gate): first the clients are matched
    among themselves (:meth:`RepresentativeRunner.net_internally`: one
    receipt per pair, both sides signed by us, both delegations attached, at
    our ask within both clients' bounds), then each client's remaining
    surplus is offered as an AgentOrder, once per client and slot;
  * ``buy`` and ``buy_again`` (1/3 and 1/6 of a slot before the gate): the
    clients' remaining needs take other representatives' offers.

S3 (``[representative] broker = "member-id"``):
  * ``submit`` (``submit_before_gate`` seconds before the gate): net the
    clients internally, then send one aggregated order per side and limit
    price to the broker (:meth:`~p2pd.roles.representative.Representative.aggregate_orders`).
    If the broker's session closes, matches both sides signed are finished
    with the other agents directly. Each fill is split among the clients of that order pro rata
    (:func:`~p2pd.roles.representative.split_fill`) and recorded in :attr:`RepresentativeRunner.ledger`,
    which is what the representative owes each client.

Clients' delegations and meter reports arrive by themselves (delegation
gossip, MeterReportMsg); a client that reported nothing for a slot is not
traded. Control method ``representative.status``; ``status`` gets a
``representative`` object. Owns ``[representative]`` (:data:`REPRESENTATIVE`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.clock import Clock
from p2pd.components.status import extend_status
from p2pd.config import DAY, Section, Table
from p2pd.errors import TradeError
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import BrokerClient, agent_receipt_record
from p2pd.roles.representative import HOPS, Representative, split_fill
from p2pd.roles.slot_phases import serve_slot_phases
from protocol import AgentOrder, AgentOrderGossip, AgentReceipt, AgentTerms, Reason
from store import StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class RepresentativeConfig:
    """``[representative]``: how a representative trades for its clients (S2, S3)."""

    broker: str | None = None
    """S3: submit aggregated orders to this broker. Unset: S2, trade directly."""
    ask: int | None = None
    """Price of clients' surplus in S2 (at least each client's min_sell_price);
    default the midpoint of the [tariffs]."""
    take_timeout: float = 5.0
    submit_before_gate: int = 60
    """S3: submit aggregated orders this many seconds before gate closure."""


def parse_representative(t: Table) -> RepresentativeConfig:
    d = RepresentativeConfig()
    return RepresentativeConfig(
        broker=t.member("broker"), ask=t.price("ask"),
        take_timeout=t.number("take_timeout", d.take_timeout, 0.1, 300.0),
        submit_before_gate=t.integer("submit_before_gate", d.submit_before_gate, 1, DAY),
    )


REPRESENTATIVE = Section("representative", parse_representative)


@dataclass(frozen=True)
class ClientFill:
    """A client's share of one broker receipt on an aggregated order (S3)."""

    trade_id: bytes
    principal: str
    side: str
    slot_start: int
    wh: int
    price: int


def _reason(exc: TradeError) -> str:
    return exc.reason.name if isinstance(exc.reason, Reason) else str(exc.reason)


class RepresentativeRunner:
    """One representative's per-slot schedule; S3 when ``broker`` and ``client`` are given."""

    def __init__(self, rep: Representative, clock: Clock, *, broker: str | None = None,
                 client: BrokerClient | None = None, submit_before_gate: int = 60) -> None:
        if (broker is None) != (client is None):
            raise ValueError("S3 needs both the broker's id and a BrokerClient")
        self.rep = rep
        self.clock = clock
        self.broker = broker
        self.client = client
        self.submit_before_gate = submit_before_gate
        self.offered: set[tuple[str, int]] = set()
        self.allocs: dict[bytes, dict[str, int]] = {}  # our aggregated order -> what is left per client
        self.ledger: list[ClientFill] = []
        self.counters: Counter[str] = Counter()
        if client is not None:
            client.on_receipt.append(self._on_fill)
            rep.node.on_close.append(self._on_close)

    @property
    def phases(self) -> dict[str, int]:
        if self.broker is not None:
            return {"submit": self.submit_before_gate}
        slot = self.rep.slot_len
        return {"offer": 2 * slot // 3, "buy": slot // 3, "buy_again": slot // 6}

    async def act(self, phase: str, slot_start: int) -> None:
        if phase == "offer":
            await self.net_internally(slot_start)
            await self.offer(slot_start)
        elif phase in ("buy", "buy_again"):
            got = await self.rep.buy_for_clients(slot_start)
            self.counters["bought_wh"] += sum(r.terms.wh for r in got)
        elif phase == "submit":
            await self.net_internally(slot_start)
            await self.submit(slot_start)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_slot_phases(self.clock, self.rep.slot_len, self.rep.gate_closure, self.phases, self.act,
                                task_status=task_status)

    # --- both scenarios: clients' surplus to clients' needs ------------------------------

    async def net_internally(self, slot_start: int) -> int:
        """Match our clients' surplus with our clients' needs; returns the Wh traded.

        Each pair gets a direct (broker-less) receipt that names both
        principals, carries both delegations and is signed twice by us as the
        agent of both sides, so the clients are billed like any other trade
        and the bounds stay provable. The price is our ask, clamped into the
        seller's ``min_sell_price`` and the buyer's ``max_buy_price``; a pair
        whose bounds do not overlap is skipped. If the store cannot commit (a
        full disk), netting stops for this slot (counter ``netting_unstored``)
        and the clients trade outside instead.
        """
        rep = self.rep
        wanted = rep.wanted(slot_start)
        sellers = sorted((p, n) for p, n in wanted.items() if n > 0)
        buyers = sorted((p, -n) for p, n in wanted.items() if n < 0)
        key = rep.node.identity.keys.signing
        traded = 0
        for seller, surplus in sellers:
            ds = rep.delegation_of(seller)
            for i, (buyer, need) in enumerate(buyers):
                db = rep.delegation_of(buyer)
                if surplus <= 0 or need <= 0 or ds is None or db is None:
                    continue
                if ds.min_sell_price > db.max_buy_price:
                    continue
                price = min(max(rep.ask, ds.min_sell_price, 1), db.max_buy_price)
                wh = min(surplus, need)
                terms = AgentTerms(rep.random_bytes(16), seller, rep.me, buyer, rep.me, "", b"", b"", slot_start,
                                   rep.slot_len, wh, price, rep.now())
                try:
                    rep.check_terms(terms, ds, db)
                except TradeError as exc:
                    self.counters[f"netting_refused:{_reason(exc)}"] += 1
                    continue
                sig = terms.sign(key)
                receipt = AgentReceipt(terms, ds, db, sig, sig, b"")
                try:
                    await rep.writer.commit(agent_receipt_record(receipt, rep.now()))
                except StorageUnavailable:
                    self.counters["netting_unstored"] += 1
                    self.counters["netted_wh"] += traded
                    return traded
                rep.used[(seller, "sell", slot_start)] += wh
                rep.used[(buyer, "buy", slot_start)] += wh
                rep.receipts[terms.trade_id] = receipt
                surplus -= wh
                buyers[i] = (buyer, need - wh)
                traded += wh
        self.counters["netted_wh"] += traded
        return traded

    # --- S2 ------------------------------------------------------------------------------

    async def offer(self, slot_start: int) -> list[AgentOrder]:
        """Offer each client's remaining surplus once per slot, at our ask (at least its floor)."""
        rep = self.rep
        posted = []
        for principal, net in rep.wanted(slot_start).items():
            if net <= 0 or (principal, slot_start) in self.offered:
                continue
            d = rep.delegation_of(principal)
            assert d is not None
            o = AgentOrder.create(rep.node.identity.keys.signing, order_id=rep.random_bytes(16), principal=principal,
                                  agent=rep.me, side="sell", slot_start=slot_start, slot_len=rep.slot_len,
                                  wh=net, price=max(rep.ask, d.min_sell_price, 1),
                                  expiry=slot_start - rep.gate_closure)
            rep.mine[o.order_id] = (o, d)
            self.offered.add((principal, slot_start))
            await rep.node.broadcast(AgentOrderGossip(o, d, rep.node.identity.credential, HOPS))
            posted.append(o)
        self.counters["offers"] += len(posted)
        self.counters["offered_wh"] += sum(o.wh for o in posted)
        return posted

    # --- S3 ------------------------------------------------------------------------------

    async def submit(self, slot_start: int) -> int:
        """Send the slot's aggregated orders to the broker; returns how many it accepted."""
        assert self.client is not None and self.broker is not None
        accepted = 0
        for order, alloc in self.rep.aggregate_orders(slot_start):
            self.allocs[order.order_id] = dict(alloc)
            try:
                await self.client.submit(self.broker, order)
            except TradeError as exc:
                del self.allocs[order.order_id]
                self.counters[f"submit_failed:{_reason(exc)}"] += 1
                continue
            accepted += 1
            self.counters["submitted_wh"] += order.wh
        self.counters["orders_submitted"] += accepted
        return accepted

    async def _on_fill(self, receipt: AgentReceipt) -> None:
        t = receipt.terms
        me = self.rep.me
        if t.seller_agent == me and t.seller_order in self.allocs:
            side, order_id = "sell", t.seller_order
        elif t.buyer_agent == me and t.buyer_order in self.allocs:
            side, order_id = "buy", t.buyer_order
        else:
            return
        left = self.allocs[order_id]
        shares = split_fill(left, t.wh)
        for principal, wh in shares.items():
            if wh:
                left[principal] -= wh
                self.rep.used[(principal, side, t.slot_start)] += wh
                self.ledger.append(ClientFill(t.trade_id, principal, side, t.slot_start, wh, t.price))
        self.counters["filled_wh"] += t.wh

    async def _on_close(self, conn: PeerConnection) -> None:
        # Broker gone mid-clearing: matches both sides signed still become
        # receipts, finished with the other agents directly.
        if self.client is not None and conn.peer is not None and conn.peer.member_id == self.broker:
            self.counters["broker_lost"] += 1
            await self.client.finish_directly()

    def status(self) -> dict[str, Any]:
        rep = self.rep
        clients = []
        for principal in rep.clients:
            d = rep.delegation_of(principal)
            assert d is not None
            clients.append({"member": principal, "max_wh_per_slot": d.max_wh_per_slot,
                            "min_sell_price": d.min_sell_price, "max_buy_price": d.max_buy_price,
                            "valid_until": d.valid_until,
                            "reports": sum(1 for (p, _) in rep.reports if p == principal)})
        return {"scenario": "S3" if self.broker else "S2", "broker": self.broker, "clients": clients,
                "receipts": len(rep.receipts) + (len(self.client.receipts) if self.client else 0),
                "client_fills": len(self.ledger),
                "counters": dict(rep.counters) | dict(self.counters)
                | (dict(self.client.counters) if self.client else {})}


class RepresentativeComponent:
    name = "representative"
    section = REPRESENTATIVE

    async def start(self, ctx: DaemonContext) -> None:
        if ctx.identity.credential.role != "representative":
            return
        cfg = REPRESENTATIVE.get(ctx.config)
        tariffs = ctx.config.tariffs
        community = ctx.config.community
        writer = ctx.services["writer"]
        market = ctx.services.get("market")
        clock = market.clock if market is not None else ctx.node.clock
        ask = cfg.ask if cfg.ask is not None else (tariffs.import_price + tariffs.export_price) // 2
        rep = Representative(ctx.node, writer, slot_len=community.slot_seconds,
                             gate_closure=community.gate_closure_seconds, ask=ask,
                             take_timeout=cfg.take_timeout)
        client = None
        if cfg.broker is not None:
            async def commit(r: AgentReceipt) -> None:
                await writer.commit(agent_receipt_record(r, int(clock.now())))

            client = BrokerClient(ctx.node, commit=commit)
        runner = RepresentativeRunner(rep, clock, broker=cfg.broker, client=client,
                                      submit_before_gate=cfg.submit_before_gate)
        ctx.services["representative"] = runner
        await ctx.nursery.start(runner.run)
        ctx.control.register("representative.status", runner.status,
                             summary="clients, their delegations and reports, trades made for them")
        extend_status(ctx.control, "representative",
                      lambda: {k: v for k, v in runner.status().items() if k != "clients"}
                      | {"clients": len(rep.clients)})
        log.info("representative_ready", scenario="S3" if cfg.broker else "S2", broker=cfg.broker or "-")


DAEMON_COMPONENT = RepresentativeComponent()
