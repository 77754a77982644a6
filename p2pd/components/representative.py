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
    Each fill is split among the clients of that order pro rata
    (:func:`~p2pd.roles.representative.split_fill`) and recorded in :attr:`RepresentativeRunner.ledger`,
    which is what the representative owes each client.
  * The broker gone (its session closed, or a submission finds no session
    or no answer): S3 falls back like S4 (:meth:`RepresentativeRunner.broker_lost`).
    Matches both sides signed are finished with the other agents directly
    (dialled if need be), so nothing countersigned is lost; what is left of
    the aggregated orders is no longer the broker's to fill; and every slot
    whose gate is still open is traded as in S2: clients' surplus offered,
    their needs taken from other representatives' offers, at once and then
    at the S2 phases, which run while the broker is away. A slot traded
    directly stays direct; a new session with the broker puts later slots
    back on it.

Clients' delegations and meter reports arrive by themselves (delegation
gossip, MeterReportMsg); a client that reported nothing for a slot is not
traded. Control method ``representative.status``; ``status`` gets a
``representative`` object. Owns ``[representative]`` (:data:`REPRESENTATIVE`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.clock import Clock, trio_deadline
from p2pd.components.status import extend_status
from p2pd.config import DAY, Section, Table
from p2pd.errors import P2pdError, TradeError
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import BrokerClient, agent_receipt_record
from p2pd.roles.representative import HOPS, Representative, split_fill
from p2pd.roles.slot_phases import serve_slot_phases
from protocol import AgentOrder, AgentOrderGossip, AgentReceipt, AgentTerms, Reason
from store import StorageUnavailable, StoreError

Dial = Callable[[str], Awaitable[Any]]

FALLBACK_BUY_AFTER = 10
"""S3 without its broker: seconds (market time) between offering a slot's
surplus directly and taking other representatives' offers for it, at most
half the time left before its gate."""

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
                 client: BrokerClient | None = None, submit_before_gate: int = 60,
                 dial: Dial | None = None) -> None:
        if (broker is None) != (client is None):
            raise ValueError("S3 needs both the broker's id and a BrokerClient")
        self.rep = rep
        self.clock = clock
        self.broker = broker
        self.client = client
        self.submit_before_gate = submit_before_gate
        self.dial = dial
        self.broker_up = broker is not None
        self.direct: set[int] = set()  # S3 slots traded directly (the broker was gone)
        self.offered: set[tuple[str, int]] = set()
        self.allocs: dict[bytes, dict[str, int]] = {}  # our aggregated order -> what is left per client
        self.ledger: list[ClientFill] = []
        self.counters: Counter[str] = Counter()
        if client is not None:
            client.on_receipt.append(self._on_fill)
            rep.node.on_close.append(self._on_close)
            rep.node.on_open.append(self._on_open)

    @property
    def phases(self) -> dict[str, int]:
        slot = self.rep.slot_len
        s2 = {"offer": 2 * slot // 3, "buy": slot // 3, "buy_again": slot // 6}
        if self.broker is None:
            return s2
        # S3 runs the S2 phases too; they act only on slots traded directly.
        return {**{k: v for k, v in s2.items() if v != self.submit_before_gate}, "submit": self.submit_before_gate}

    def is_direct(self, slot_start: int) -> bool:
        """True if the slot is traded as in S2: no broker configured, or gone."""
        return self.broker is None or not self.broker_up or slot_start in self.direct

    async def act(self, phase: str, slot_start: int) -> None:
        direct = self.is_direct(slot_start)
        if phase == "submit" and not direct:
            await self.net_internally(slot_start)
            await self.submit(slot_start)
        elif not direct:
            return  # S3 with its broker: the S2 phases have nothing to do
        elif phase == "offer":
            if self.broker is not None:
                self.direct.add(slot_start)
            await self.net_internally(slot_start)
            await self.offer(slot_start)
        elif phase in ("buy", "buy_again", "submit"):  # a direct slot's last takes at "submit"
            got = await self.rep.buy_for_clients(slot_start)
            self.counters["bought_wh"] += sum(r.terms.wh for r in got)

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
        """Send the slot's aggregated orders to the broker; returns how many it accepted.

        If the broker is gone (no session, no answer), the slot is traded
        directly (:meth:`broker_lost`).
        """
        assert self.client is not None and self.broker is not None
        accepted = 0
        for order, alloc in self.rep.aggregate_orders(slot_start):
            self.allocs[order.order_id] = dict(alloc)
            try:
                await self.client.submit(self.broker, order)
            except TradeError as exc:
                del self.allocs[order.order_id]
                # Not in the book, or unknown: either way never the broker's to fill.
                self.client.own.pop(order.order_id, None)
                self.counters[f"submit_failed:{_reason(exc)}"] += 1
                if exc.reason in (Reason.NOT_FOUND, Reason.TIMEOUT):
                    await self.broker_lost(slot_start)
                    break
                continue
            accepted += 1
            self.counters["submitted_wh"] += order.wh
        self.counters["orders_submitted"] += accepted
        return accepted

    async def broker_lost(self, slot_start: int | None = None) -> None:
        """The broker is gone: finish signed matches directly, trade open slots as in S2.

        ``slot_start``: a slot whose submission just failed (traded directly
        even if no order of it reached the broker).
        """
        assert self.client is not None
        first = self.broker_up
        self.broker_up = False
        if first:
            self.counters["broker_lost"] += 1
            log.warning("broker_lost", broker=self.broker or "-")
        me = self.rep.me
        for prop, _ in list(self.client.pending.values()):
            t = prop.terms
            other = t.buyer_agent if t.seller_agent == me else t.seller_agent
            if other not in self.rep.node.sessions and self.dial is not None:
                try:
                    await self.dial(other)
                except (P2pdError, OSError):
                    self.counters["dial_failed"] += 1
        await self.client.finish_directly()
        now = self.rep.now()
        gate = self.rep.gate_closure
        slots = {slot_start} if slot_start is not None else set()
        for own in self.client.own.values():
            o = own.order
            if own.remaining > 0 and now < o.slot_start - gate:
                self.counters["released_wh"] += own.remaining
                own.remaining = 0  # no longer the broker's to fill, even if it comes back
                slots.add(o.slot_start)
        slots |= {s for (_, s) in self.rep.reports if now < s - gate}
        for s in sorted(slots - self.direct):
            self.direct.add(s)
            self.rep.node.nursery.start_soon(self.trade_directly, s)

    async def trade_directly(self, slot_start: int) -> None:
        """Trade a slot as in S2 now: net, offer, and a little later take offers.

        Runs on its own (started by :meth:`broker_lost`): a store that refuses
        writes or a daemon stopping ends it, counted, never the node.
        """
        try:
            await self.net_internally(slot_start)
            await self.offer(slot_start)
            now = self.rep.now()
            wait = min(FALLBACK_BUY_AFTER, (slot_start - self.rep.gate_closure - now) / 2)
            await trio.sleep_until(trio_deadline(self.clock, now + max(0.0, wait)))
            got = await self.rep.buy_for_clients(slot_start)
        except (P2pdError, StoreError) as exc:  # ShuttingDown, StorageUnavailable, ...
            self.counters[f"direct_failed:{type(exc).__name__}"] += 1
            log.info("direct_slot_failed", slot=slot_start, error=str(exc))
            return
        self.counters["bought_wh"] += sum(r.terms.wh for r in got)
        self.counters["slots_direct"] += 1

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
        # Broker gone, maybe mid-clearing: matches both sides signed still
        # become receipts, finished with the other agents directly.
        if self.client is not None and conn.peer is not None and conn.peer.member_id == self.broker:
            await self.broker_lost()

    async def _on_open(self, conn: PeerConnection) -> None:
        if conn.peer is not None and conn.peer.member_id == self.broker and not self.broker_up:
            self.broker_up = True
            self.counters["broker_back"] += 1

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
        return {"scenario": "S3" if self.broker else "S2", "broker": self.broker,
                "broker_up": self.broker_up if self.broker else None, "clients": clients,
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
                                      submit_before_gate=cfg.submit_before_gate,
                                      dial=getattr(ctx.discovery, "dial_member", None))
        ctx.services["representative"] = runner
        await ctx.nursery.start(runner.run)
        ctx.control.register("representative.status", runner.status,
                             summary="clients, their delegations and reports, trades made for them")
        extend_status(ctx.control, "representative",
                      lambda: {k: v for k, v in runner.status().items() if k != "clients"}
                      | {"clients": len(rep.clients)})
        log.info("representative_ready", scenario="S3" if cfg.broker else "S2", broker=cfg.broker or "-")


DAEMON_COMPONENT = RepresentativeComponent()
