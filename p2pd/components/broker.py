"""Daemon component "broker": the periodic double auction, on a node whose role is broker.

:class:`BrokerRunner` clears every slot that took orders at its gate
closure (``slot_start - gate_closure``, market time) with
:meth:`p2pd.roles.broker.Broker.close_slot`: the matches are proposed, countersigned
and delivered, the book and the signed summary are gossiped, and the
receipts are committed through the node's writer, so the broker's own
receipt log (p2pd/roles/replication.py) records every trade it brokered. A slot
nobody ordered in is not cleared (nothing to publish).

Control methods: ``broker.status`` and ``broker.book {slot_start}``;
``status`` gets a ``broker`` object. Nodes of other roles do not run it.

Owns ``[broker]`` (:data:`BROKER`), which also tells a prosumer the broker it
trades through (S4; the client component reads it).
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
from p2pd.control.server import INVALID_PARAMS, Param, RpcError
from p2pd.market.sharing import price_grid
from p2pd.roles.broker import Broker, agent_receipt_record
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.sharing import SharedBroker
from p2pd.roles.slot_phases import serve_slot_phases
from protocol import GRID_MAX, MAX_PRICE, MAX_TIME, ClearingSummary
from store import StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class BrokerConfig:
    """``[broker]``: on a broker, the auction; on a prosumer, the broker it trades through (S4)."""

    member: str | None = None
    """Prosumers and representatives: the broker's member id. Unset: no broker."""
    sign_timeout: float = 10.0
    """Broker: how long a match waits for both countersignatures."""
    submit_timeout: float = 5.0
    """Parties: how long a submission waits for BrokerAccepted before falling back."""
    place_before_gate: int = 300
    """Prosumers (S4): send each slot's order this many seconds before gate closure."""
    price_step: int = 1000
    """Broker: spacing of the price grid of shared clearing (S3), from the export to
    the import tariff; at most 256 points."""
    share_timeout: float = 10.0
    """Broker: how long a round of shared clearing waits for the representatives' sums."""


def parse_broker(t: Table) -> BrokerConfig:
    d = BrokerConfig()
    return BrokerConfig(
        member=t.member("member"),
        sign_timeout=t.number("sign_timeout", d.sign_timeout, 0.1, 300.0),
        submit_timeout=t.number("submit_timeout", d.submit_timeout, 0.1, 300.0),
        place_before_gate=t.integer("place_before_gate", d.place_before_gate, 1, DAY),
        price_step=t.integer("price_step", d.price_step, 1, MAX_PRICE),
        share_timeout=t.number("share_timeout", d.share_timeout, 0.1, 300.0),
    )


BROKER = Section("broker", parse_broker)


class BrokerRunner:
    """Clears each slot at gate closure; ``writer`` (optional) stores the receipts.

    With ``shared``, slots that representatives joined are cleared by shared
    curves too (p2pd/roles/sharing.py).
    """

    def __init__(self, broker: Broker, clock: Clock, writer: ReceiptWriter | Any = None,
                 shared: SharedBroker | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.writer = writer
        self.shared = shared
        self.counters: Counter[str] = Counter()

    async def act(self, phase: str, slot_start: int) -> None:
        # Catch up on any earlier slot left open (the timer fired late, or orders
        # arrived for a slot whose turn passed while we were clearing another).
        shared = self.shared
        for s in sorted(self.broker.slots.keys() | (shared.slots.keys() if shared else set())):
            if s > slot_start:
                continue
            if shared is not None and shared.has(s):
                await self.close_shared(s)
            slot = self.broker.slots.get(s)
            if slot is not None and not slot.closed:
                if slot.orders:
                    await self.close(s)
                else:
                    slot.closed = True
        if slot_start not in self.broker.slots:
            self.counters["slots_empty"] += 1

    async def close_shared(self, slot_start: int) -> ClearingSummary | None:
        """Clear a slot by shared curves now; None if it could not (counted, never raised)."""
        assert self.shared is not None
        try:
            summary = await self.shared.clear(slot_start)
        except Exception as exc:  # one bad round must not stop the auction for later slots
            self.counters["slots_failed"] += 1
            log.warning("shared_clearing_failed", slot=slot_start, error=f"{type(exc).__name__}: {exc}")
            return None
        if summary is None:
            return None
        self.counters["slots_cleared"] += 1
        await self._store(slot_start)
        log.info("slot_cleared", slot=slot_start, shared=summary.orders, price=summary.price,
                 volume_wh=summary.volume_wh)
        return summary

    async def _store(self, slot_start: int) -> None:
        if self.writer is None:
            return
        for r in self.broker.slots[slot_start].receipts:
            try:
                await self.writer.commit(agent_receipt_record(r, int(self.clock.now())))
            except StorageUnavailable:
                # The broker's copy only: the parties hold theirs. A full
                # disk is logged once by the store's health.
                self.counters["receipts_unstored"] += 1

    async def close(self, slot_start: int) -> ClearingSummary | None:
        """Clear one slot now; None if clearing failed (counted and logged, never raised)."""
        try:
            summary = await self.broker.close_slot(slot_start)
        except Exception as exc:  # one bad book must not stop the auction for later slots
            self.broker.slots[slot_start].closed = True
            self.counters["slots_failed"] += 1
            log.warning("clearing_failed", slot=slot_start, error=f"{type(exc).__name__}: {exc}")
            return None
        self.counters["slots_cleared"] += 1
        await self._store(slot_start)
        log.info("slot_cleared", slot=slot_start, orders=summary.orders, price=summary.price,
                 volume_wh=summary.volume_wh)
        return summary

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_slot_phases(self.clock, self.broker.slot_len, self.broker.gate_closure, {"clear": 0},
                                self.act, task_status=task_status)


def broker_status(runner: BrokerRunner) -> dict[str, Any]:
    """slots open and cleared, the last clearing, counters"""
    b = runner.broker
    open_slots = [{"slot_start": s, "orders": len(sl.orders)} for s, sl in sorted(b.slots.items())
                  if not sl.closed]
    cleared = [sl.summary for _, sl in sorted(b.slots.items()) if sl.summary is not None]
    last = cleared[-1] if cleared else None
    return {
        "open_slots": open_slots,
        "slots_cleared": len(cleared),
        "last": None if last is None else summary_dict(last),
        "counters": dict(b.counters) | dict(runner.counters)
        | ({f"shared_{k}": v for k, v in runner.shared.counters.items()} if runner.shared else {}),
    }


def summary_dict(s: ClearingSummary) -> dict[str, Any]:
    return {"slot_start": s.slot_start, "orders": s.orders, "price": s.price, "volume_wh": s.volume_wh,
            "book_hash": s.book_hash.hex(), "result_hash": s.result_hash.hex()}


def broker_book(runner: BrokerRunner, slot_start: int) -> dict[str, Any]:
    """a slot's order book, and its clearing once the gate has closed"""
    slot = runner.broker.slots.get(slot_start)
    if slot is None:
        raise RpcError(INVALID_PARAMS, f"no orders for slot {slot_start}")
    orders = [{"order_id": o.order_id.hex(), "agent": o.agent, "principal": o.principal, "side": o.side,
               "wh": o.wh, "price": o.price} for o in sorted(slot.orders.values(), key=lambda o: o.order_id)]
    return {"slot_start": slot_start, "closed": slot.closed, "orders": orders,
            "summary": None if slot.summary is None else summary_dict(slot.summary),
            "trades": [{"trade_id": r.terms.trade_id.hex(), "seller": r.terms.seller,
                        "buyer": r.terms.buyer, "wh": r.terms.wh, "price": r.terms.price}
                       for r in slot.receipts]}


class BrokerComponent:
    name = "broker"
    section = BROKER

    async def start(self, ctx: DaemonContext) -> None:
        if ctx.identity.credential.role != "broker":
            return
        cfg = BROKER.get(ctx.config)
        community = ctx.config.community
        broker = Broker(ctx.node, slot_len=community.slot_seconds, gate_closure=community.gate_closure_seconds,
                        sign_timeout=cfg.sign_timeout)
        market = ctx.services.get("market")
        clock = market.clock if market is not None else ctx.node.clock
        tariffs = ctx.config.tariffs
        grid = price_grid(max(tariffs.export_price, 1), max(tariffs.import_price, 1),
                          max(cfg.price_step, -(-(tariffs.import_price - tariffs.export_price) // (GRID_MAX - 1))))
        shared = SharedBroker(broker, grid, share_timeout=cfg.share_timeout)
        runner = BrokerRunner(broker, clock, ctx.services.get("writer"), shared)
        ctx.services["broker"] = runner
        await ctx.nursery.start(runner.run)
        ctx.control.register("broker.status", lambda: broker_status(runner),
                             summary=broker_status.__doc__ or "")
        ctx.control.register("broker.book", lambda slot_start: broker_book(runner, slot_start),
                             {"slot_start": Param(int, lo=0, hi=MAX_TIME)}, summary=broker_book.__doc__ or "")
        extend_status(ctx.control, "broker", lambda: {k: v for k, v in broker_status(runner).items()
                                                      if k != "open_slots"})
        log.info("broker_ready", slot_seconds=broker.slot_len, gate_closure=broker.gate_closure)


DAEMON_COMPONENT = BrokerComponent()
