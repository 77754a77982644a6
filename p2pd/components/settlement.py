"""Settling each slot once it is over: the member's signed statements.

:class:`SettlementLoop` waits until a slot has ended plus ``delay_seconds``
(for the readings around its end to arrive), then:

1. computes the member's slot energy from the stored readings
   (:func:`p2pd.market.settlement.slot_energy`);
2. gathers the slot's receipts from the store;
3. runs :func:`~p2pd.market.settlement.settle_slot` with the ``[tariffs]`` tariff;
4. signs the member's statement with the node key and stores it
   (:class:`store.StatementRecord`, replacing any earlier one for the slot);
5. publishes a ``statement`` event.

Every slot is settled, traded or not, so day and month totals
(``statements.list``) are complete bills.

Idempotent: ``settled_at`` is the scheduled time (slot end + delay), not the
clock, and Ed25519 signatures are deterministic, so settling a slot again on
the same inputs stores the same bytes. After a restart the loop carries on
after the newest stored statement (or, the first time, ``backfill_seconds``
back, from the first reading).

Counterparties: a node measures only its own meter. Until meter reports are
exchanged, each counterparty is taken to have delivered (or used) what it
contracted, so our lines are limited by our meter alone; the counterparty's
statement is limited by its meter. Comparing the two lines of a trade
(identical when both meters cover the contracts) shows any disagreement.

A slot whose readings do not cover both ends is retried until
``reading_gap_seconds`` after its end, then skipped with a warning
(counter ``slots_skipped``). A statement the store cannot write (a full
disk: ``store.StorageUnavailable``, reported by the daemon's store health)
is retried at the next wake-up, never skipped (counter
``statements_unstored``).

Owns ``[settlement]`` (:data:`SETTLEMENT`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log, storage
from p2pd.clock import Clock, trio_deadline
from p2pd.components.status import extend_status
from p2pd.components.trading import TRADING
from p2pd.config import Config, Section, Table
from p2pd.control.server import INVALID_PARAMS, Param, RpcError
from p2pd.events import EventBus, StatementSigned
from p2pd.market.settlement import (
    PRICE_SCALE,
    SettlementError,
    SignedStatement,
    SlotEnergy,
    Statement,
    Tariff,
    Trade,
    settle_slot,
    sign_statement,
    slot_energy,
)
from p2pd.net.identity import NodeIdentity
from protocol import MAX_TIME
from store import ReceiptRecord, Repository, StatementRecord, StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

DAY = 86400
# Statement fields kept as StatementRecord.fields (all ints; summed by statements.list).
SUMMED = ("import_wh", "export_wh", "p2p_bought_wh", "p2p_sold_wh", "p2p_cost", "p2p_revenue",
          "supplier_import_wh", "supplier_export_wh", "supplier_import_cost",
          "supplier_export_revenue", "bill", "bill_without_p2p", "saving", "trades")
PERIODS = {"slot": DAY, "day": 31 * DAY, "month": 366 * DAY}
"""Each period's default span back from ``end`` in statements.list."""
RETRY_SECONDS = 60


@dataclass(frozen=True)
class SettlementConfig:
    """``[settlement]``: when each slot is settled and how far back to catch up."""

    enabled: bool = True
    delay_seconds: int = 120
    """Wait this long after a slot ends for the readings around its end."""
    backfill_seconds: int = 2 * DAY
    """On the first start, settle slots this far back (if readings exist)."""
    reading_gap_seconds: int = 3600
    """Readings are looked up this far either side of a slot boundary; a slot
    still without readings at both ends this long after it ended is skipped."""


def parse_settlement(t: Table) -> SettlementConfig:
    d = SettlementConfig()
    return SettlementConfig(
        enabled=t.boolean("enabled", d.enabled),
        delay_seconds=t.integer("delay_seconds", d.delay_seconds, 0, DAY),
        backfill_seconds=t.integer("backfill_seconds", d.backfill_seconds, 0, 30 * DAY),
        reading_gap_seconds=t.integer("reading_gap_seconds", d.reading_gap_seconds, 1, DAY),
    )


SETTLEMENT = Section("settlement", parse_settlement)


def tariff(config: Config) -> Tariff:
    """The supplier's tariff of ``[tariffs]``, as settlement takes it."""
    t = config.tariffs
    return Tariff(t.import_price, t.export_price, t.currency)


def statement_fields(st: Statement) -> dict[str, int]:
    fields = {name: getattr(st, name) for name in SUMMED if name != "trades"}
    fields["trades"] = len(st.lines)
    fields["settled_at"] = st.settled_at
    return fields


class SettlementLoop:
    """Settles our member's slots from the store; see the module docstring.

    ``repo`` is the store, ``identity`` the node's (its key signs), ``clock``
    the wall clock. ``max_ahead`` bounds how long before its slot a receipt
    can have been made (the market's ``max_ahead``), to read only recent
    receipts.
    """

    def __init__(self, repo: Repository, identity: NodeIdentity, clock: Clock, *, slot_len: int,
                 tariff: Tariff, config: SettlementConfig, max_ahead: int,
                 events: EventBus | None = None) -> None:
        self.repo = repo
        self.identity = identity
        self.member_id = identity.member_id
        self.meter_id = identity.credential.metering_point
        self.clock = clock
        self.slot_len = slot_len
        self.tariff = tariff
        self.config = config
        self.max_ahead = max_ahead
        self.events = events
        self.next_slot: int | None = None
        self.last_slot: int | None = None
        self.counters: Counter[str] = Counter()

    def _align_up(self, t: int) -> int:
        return -(-t // self.slot_len) * self.slot_len

    async def restore(self, now: int) -> int:
        """Set :attr:`next_slot` from the store (see the module docstring); returns it."""
        floor = self._align_up(now - self.config.backfill_seconds)
        stored = await storage.call(self.repo, self.repo.statements, self.member_id, floor,
                                    now + self.slot_len)
        if stored:
            self.last_slot = stored[-1].slot_start
            self.next_slot = stored[-1].slot_start + self.slot_len
            return self.next_slot
        # First start: from the first reading in the backfill window, looked
        # up an hour at a time so a long history is never loaded at once.
        self.next_slot = self._align_up(now)
        for start in range(floor, now + 1, 3600):
            rows = await storage.call(self.repo, self.repo.readings, self.meter_id, start, start + 3600)
            if rows:
                self.next_slot = max(floor, min(self.next_slot, self._align_up(rows[0].ts)))
                break
        return self.next_slot

    async def settle(self, slot_start: int) -> SignedStatement:
        """Settle one slot, store and announce the statement. Raises SettlementError."""
        end = slot_start + self.slot_len
        gap = self.config.reading_gap_seconds
        readings = await storage.call(self.repo, self.repo.readings, self.meter_id,
                                      slot_start - gap, end + gap + 1)
        energy = slot_energy(readings, slot_start, end)
        receipts = await storage.call(self.repo, self.repo.receipts, self.member_id,
                                      slot_start - self.max_ahead)
        ours = [r for r in receipts if r.slot_start == slot_start and r.slot_len == self.slot_len
                and self.member_id in (r.seller, r.buyer)]
        statement = await self._statement(slot_start, energy, ours)
        signed = sign_statement(self.identity.keys.signing, statement)
        await storage.call(self.repo, self.repo.put_statement, StatementRecord(
            self.member_id, slot_start, self.slot_len, signed.encode(), statement_fields(statement)))
        self.counters["slots_settled"] += 1
        self.last_slot = max(self.last_slot or slot_start, slot_start)
        if self.events is not None:
            self.events.publish(StatementSigned(slot_start, len(statement.lines), statement.bill,
                                                statement.saving, statement.currency))
        return signed

    async def _statement(self, slot_start: int, energy: SlotEnergy,
                         receipts: Iterable[ReceiptRecord]) -> Statement:
        me = self.identity.keys.signing.public
        keys: dict[str, bytes] = {self.member_id: me}
        trades = []
        others: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])  # key -> [import, export]
        for r in receipts:
            for name in (r.seller, r.buyer):
                if name not in keys:
                    member = await storage.call(self.repo, self.repo.get_member, name)
                    keys[name] = member.sign_pk if member is not None else name.encode()
            seller, buyer = keys[r.seller], keys[r.buyer]
            trades.append(Trade(r.trade_id, seller, buyer, r.wh, r.price))
            if seller != me:
                others[seller][1] += r.wh
            if buyer != me:
                others[buyer][0] += r.wh
        parties = {k: SlotEnergy(imp, exp) for k, (imp, exp) in others.items()}
        parties[me] = energy
        settled = settle_slot(slot_start, self.slot_len, trades, parties, self.tariff,
                              settled_at=slot_start + self.slot_len + self.config.delay_seconds)
        return settled.statements[me]

    def due(self, slot_start: int) -> int:
        return slot_start + self.slot_len + self.config.delay_seconds

    async def settle_due(self, now: int) -> list[int]:
        """Settle every slot that is due by ``now``; returns their starts.

        Stops at a slot still waiting for readings, or whose statement the
        store cannot write now (a full disk); it is retried later.
        """
        if self.next_slot is None:
            await self.restore(now)
        assert self.next_slot is not None
        done = []
        while self.due(self.next_slot) <= now:
            slot = self.next_slot
            try:
                await self.settle(slot)
                done.append(slot)
            except StorageUnavailable:
                self.counters["statements_unstored"] += 1
                break
            except SettlementError as exc:
                if now < slot + self.slot_len + max(self.config.reading_gap_seconds,
                                                    self.config.delay_seconds):
                    self.counters["slots_waiting"] += 1
                    break
                self.counters["slots_skipped"] += 1
                log.warning("slot_not_settled", slot=slot, error=str(exc))
            self.next_slot = slot + self.slot_len
        return done

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Settle due slots forever (wall clock); run with ``nursery.start``."""
        await self.restore(int(self.clock.now()))
        task_status.started()
        while True:
            now = int(self.clock.now())
            await self.settle_due(now)
            assert self.next_slot is not None
            wake = self.due(self.next_slot)
            if wake <= now:  # waiting for readings: look again a little later
                wake = now + min(RETRY_SECONDS, self.slot_len)
            await trio.sleep_until(trio_deadline(self.clock, wake))

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "next_slot": self.next_slot, "last_slot": self.last_slot,
                "counters": dict(self.counters)}


def _period_key(ts: int, period: str) -> tuple[str, int]:
    d = datetime.fromtimestamp(ts, timezone.utc)
    if period == "day":
        start = d.replace(hour=0, minute=0, second=0)
        return start.strftime("%Y-%m-%d"), int(start.timestamp())
    start = d.replace(day=1, hour=0, minute=0, second=0)
    return start.strftime("%Y-%m"), int(start.timestamp())


def aggregate(records: Iterable[StatementRecord], period: str) -> list[dict[str, Any]]:
    """Statements as rows: one per slot (with the signed bytes), or summed per UTC day or month."""
    if period == "slot":
        return [{"slot_start": r.slot_start, "slot_len": r.slot_len, **r.fields,
                 "statement": r.encoded.hex()} for r in records]
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        key, start = _period_key(r.slot_start, period)
        row = rows.setdefault(key, {period: key, "start": start, "slots": 0,
                                    **{name: 0 for name in SUMMED}})
        row["slots"] += 1
        for name in SUMMED:
            row[name] += int(r.fields.get(name, 0))
    return list(rows.values())


class SettlementComponent:
    name = "settlement"
    section = SETTLEMENT

    async def start(self, ctx: DaemonContext) -> None:
        cfg = SETTLEMENT.get(ctx.config)
        trading = TRADING.get(ctx.config)
        loop: SettlementLoop | None = None
        if not cfg.enabled or ctx.meter is None:
            log.info("settlement_off", reason="disabled in [settlement]" if not cfg.enabled
                     else "no meter")
        else:
            loop = SettlementLoop(ctx.repo, ctx.identity, ctx.node.clock,
                                  slot_len=ctx.config.community.slot_seconds, tariff=tariff(ctx.config),
                                  config=cfg, max_ahead=trading.max_ahead_seconds,
                                  events=ctx.node.events)
            ctx.services["settlement"] = loop
            await ctx.nursery.start(loop.serve)
        register_statement_methods(ctx)
        extend_status(ctx.control, "settlement", loop.status if loop else lambda: {"enabled": False})


def register_statement_methods(ctx: DaemonContext) -> None:
    repo = ctx.repo
    member = ctx.identity.member_id

    async def statements_list(period: str, start: int | None, end: int | None) -> dict[str, Any]:
        """our signed slot statements, or their totals per UTC day or month"""
        if period not in PERIODS:
            raise RpcError(INVALID_PARAMS, "invalid params: period must be slot, day or month")
        end = int(ctx.node.clock.now()) + 1 if end is None else end
        start = end - PERIODS[period] if start is None else start
        if end <= start:
            raise RpcError(INVALID_PARAMS, "invalid params: end must be after start")
        records = await storage.call(repo, repo.statements, member, start, end)
        t = ctx.config.tariffs
        return {"period": period, "start": start, "end": end, "currency": t.currency,
                "money_scale": PRICE_SCALE, "rows": aggregate(records, period)}

    ctx.control.register("statements.list", statements_list, {
        "period": Param(str, required=False, default="slot", max_len=5, help="slot, day or month"),
        "start": Param(int, required=False, lo=0, hi=MAX_TIME),
        "end": Param(int, required=False, lo=0, hi=MAX_TIME),
    })


DAEMON_COMPONENT = SettlementComponent()
