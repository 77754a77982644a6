"""The automatic trading agent: trades a member's forecast surplus or need.

Each tick the agent looks ``lead_slots`` slots ahead, forecasts the member's
net energy for that slot and then:

- surplus >= ``min_wh``: fills live bids at or above its floor (if any), and
  posts one sell offer at its ask for the rest, once per slot;
- need >= ``min_wh``: takes the cheapest live sell offers for the slot at or
  under its ceiling until the need is covered (partial takes allowed), and
  optionally posts a bid for what is still missing.

Its prices, plans and choice of orders are decided in p2pd/market/autotrade.py
(:class:`~p2pd.market.autotrade.AgentConfig` keeps every trade at least as
good as the supplier's tariffs for both parties).

The agent does not offer energy it cannot measure: while the meter reports
itself unhealthy it posts no sell offers and fills no bids.

Time comes from the market clock (``market.clock``), so a simulation can run
a day in seconds with :class:`p2pd.clock.TrioWallClock` and a ``scale``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from p2pd import log
from p2pd.clock import Clock, trio_deadline
from p2pd.errors import P2pdError, TradeError
from p2pd.market.autotrade import AgentConfig as AgentConfig
from p2pd.market.autotrade import AgentConfigError as AgentConfigError
from p2pd.market.autotrade import SlotPlan as SlotPlan
from p2pd.market.autotrade import candidates, open_slots
from p2pd.market.forecast import forecast_net, net_by_slot
from p2pd.market.settlement import CumulativeReading
from p2pd.roles.trading import BookEntry, Market
from protocol import Reason, is_pseudonym_name


class Forecaster(Protocol):
    """Forecast of a member's net energy for one slot."""

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        """Expected export minus import in Wh (positive = surplus to sell)."""
        ...


class HealthSource(Protocol):
    """Anything with a ``healthy`` flag, such as :class:`meter_drivers.MonitoredMeter`."""

    @property
    def healthy(self) -> bool: ...


class ProfileMeter(Protocol):
    """A meter that can be read at any time, like :class:`meter_drivers.SimulatedMeter`."""

    def reading_at(self, t: float) -> CumulativeReading: ...


Dialer = Callable[[str], Awaitable[Any]]


# --- forecasters ---------------------------------------------------------------


class ReadingsForecaster:
    """:func:`p2pd.market.forecast.forecast_net` over readings fed with :meth:`add`.

    Knows nothing until it has a completed slot; then forecasts as
    docs/settlement.md describes. ``clock`` gives "now" so that slots that
    have not ended are never used.
    """

    def __init__(self, clock: Clock, *, keep_seconds: int = 2 * 86400, recent_slots: int = 4,
                 yesterday_weight_pct: int = 50) -> None:
        self.clock = clock
        self.readings: list[CumulativeReading] = []
        self.keep_seconds = keep_seconds
        self.recent_slots = recent_slots
        self.weight = yesterday_weight_pct
        self._cache: tuple[int, int, dict[int, int]] | None = None

    def add(self, reading: CumulativeReading) -> None:
        """Append a reading (readings must come in time order; older ones are ignored)."""
        if self.readings and reading.ts <= self.readings[-1].ts:
            return
        self.readings.append(reading)
        horizon = reading.ts - self.keep_seconds
        if self.readings[0].ts < horizon:
            self.readings = [r for r in self.readings if r.ts >= horizon]

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        if len(self.readings) < 2:
            return 0
        key = (len(self.readings), self.readings[-1].ts)
        if self._cache is None or self._cache[:2] != key:
            self._cache = (*key, net_by_slot(self.readings, slot_len))
        value = forecast_net(self._cache[2], slot_start, now=int(self.clock.now()),
                             slot_seconds=slot_len, recent_slots=self.recent_slots,
                             yesterday_weight_pct=self.weight)
        return 0 if value is None else -value


class PerfectForesight:
    """The exact net energy of a deterministic meter profile (simulations only)."""

    def __init__(self, meter: ProfileMeter) -> None:
        self.meter = meter

    def net_wh(self, slot_start: int, slot_len: int) -> int:
        a, b = self.meter.reading_at(slot_start), self.meter.reading_at(slot_start + slot_len)
        return (b.export_wh - a.export_wh) - (b.import_wh - a.import_wh)


# --- the agent -------------------------------------------------------------------


class Agent:
    """One member's automatic trader over a :class:`Market`.

    ``dial(member_id)`` (optional) opens a session with an order's owner
    when none exists; it is tried once per owner and slot. ``meter`` (optional)
    is a :class:`HealthSource`; while unhealthy no energy is offered.
    ``phase`` in [0, 1) shifts this agent's ticks within the slot so a
    community does not act in lockstep; by default it is derived from the
    member id.
    """

    def __init__(self, market: Market, forecaster: Forecaster, config: AgentConfig | None = None,
                 *, meter: HealthSource | None = None, dial: Dialer | None = None,
                 phase: float | None = None) -> None:
        self.market = market
        self.forecaster = forecaster
        self.config = config or AgentConfig()
        self.meter = meter
        self.dial = dial
        if dial is not None and market.dial is None:
            market.dial = dial  # the owner of a pseudonymous order reaches its takers with it
        self.clock: Clock = market.clock
        digest = hashlib.sha256(market.me.encode()).digest()
        self.phase = phase if phase is not None else int.from_bytes(digest[:4], "big") / 2**32
        self._salt = digest
        self.plans: dict[int, SlotPlan] = {}
        self.remaining_seen: dict[bytes, int] = {}  # others' orders: what their owner said is left
        self.counters: Counter[str] = Counter()
        self._current = -1
        self._deadline: float | None = None

    @property
    def slot_len(self) -> int:
        return self.market.rules.slot_len

    # --- one tick -----------------------------------------------------------------

    def open_slots(self, now: int) -> list[int]:
        """Slots from the next one up to ``lead_slots`` ahead that still take orders."""
        return open_slots(now, self.slot_len, self.market.rules.gate_closure, self.config.lead_slots)

    async def tick(self, now: int, *, deadline: float | None = None) -> None:
        """Do this tick's work for every slot still open, up to ``lead_slots`` ahead.

        The farthest slot is where offers first appear; nearer slots get a
        second chance to buy what was offered late. Never raises for refused
        trades or unreachable peers; they are counted in ``counters``. Safe to
        call several times per slot: an offer is posted once per slot and
        purchases only cover what is still needed. No new take starts once
        the market clock passes ``deadline``.
        """
        if not self.config.enabled:
            return
        self._deadline = deadline
        self._forget_before(now // self.slot_len * self.slot_len)
        self.counters["ticks"] += 1
        for target in reversed(self.open_slots(now)):
            plan = self.plans.setdefault(target, SlotPlan())
            net = self.forecaster.net_wh(target, self.slot_len)
            if net >= self.config.min_wh:
                await self._sell(target, net, plan)
            elif -net >= self.config.min_wh:
                await self._buy(target, -net, plan, now)

    def _forget_before(self, slot: int) -> None:
        if slot == self._current:
            return
        self._current = slot
        self.market.prune()  # expired orders leave the book once per slot
        for s in [s for s in self.plans if s < slot]:
            del self.plans[s]
        if len(self.remaining_seen) > 10_000:
            self.remaining_seen.clear()

    async def _sell(self, target: int, surplus: int, plan: SlotPlan) -> None:
        if self.meter is not None and not self.meter.healthy:
            self.counters["sell_skipped_meter_unhealthy"] += 1
            return
        if plan.offer_posted:
            return
        left = surplus - plan.sold_wh
        bids = self._live(target, "buy", lambda p: p >= self.config.floor, highest_first=True)
        for entry in bids[: self.config.max_takes_per_tick]:
            if left < self.config.min_wh:
                break
            got = await self._take(entry, left, plan)
            plan.sold_wh += got
            left -= got
        if left >= self.config.min_wh:
            try:
                await self.market.post("sell", target, left, self.config.ask)
            except TradeError as exc:
                self.counters[f"post_failed:{_reason(exc)}"] += 1
                return
            self.counters["offers_posted"] += 1
            self.counters["offered_wh"] += left
        plan.offer_posted = True

    async def _buy(self, target: int, need: int, plan: SlotPlan, now: int) -> None:
        if plan.bid_posted:
            return  # the bid stands for whatever is still missing
        left = need - plan.bought_wh
        offers = self._live(target, "sell", lambda p: p <= self.config.ceiling, highest_first=False)
        for entry in offers[: self.config.max_takes_per_tick]:
            if left < self.config.min_wh:
                break
            got = await self._take(entry, left, plan)
            plan.bought_wh += got
            left -= got
        if self.config.post_bids and left >= self.config.min_wh:
            try:
                await self.market.post("buy", target, left, self.config.bid)
            except TradeError as exc:
                self.counters[f"post_failed:{_reason(exc)}"] += 1
                return
            plan.bid_posted = True
            self.counters["bids_posted"] += 1

    def _live(self, target: int, side: str, price_ok: Callable[[int], bool], *,
              highest_first: bool) -> list[BookEntry]:
        others = (e for e in self.market.book.values() if not self.market.is_own(e))
        return candidates(others, target=target, side=side, price_ok=price_ok,
                          me=self.market.me, now=self.market.now(), remaining_seen=self.remaining_seen,
                          salt=self._salt, highest_first=highest_first)

    def _out_of_time(self) -> bool:
        if self._deadline is not None and self.clock.now() >= self._deadline:
            self.counters["ticks_out_of_time"] += 1
            return True
        return False

    async def _take(self, entry: BookEntry, want: int, plan: SlotPlan) -> int:
        """Take up to ``want`` Wh of ``entry``; returns the Wh actually traded."""
        if self._out_of_time():
            return 0
        order = entry.order
        known = self.remaining_seen.get(order.order_id, order.wh)
        wh = min(want, known, order.wh)
        if wh <= 0:
            return 0
        # A pseudonymous order's owner opens the session itself (market.take).
        if not is_pseudonym_name(order.member_id) and not await self._ensure_session(order.member_id, plan):
            return 0
        for _ in range(2):  # a second try with what the owner says is left
            try:
                receipt = await self.market.take(order.order_id, wh)
            except TradeError as exc:
                self.counters[f"take_failed:{_reason(exc)}"] += 1
                if exc.reason == Reason.INSUFFICIENT and exc.remaining_wh:
                    self.remaining_seen[order.order_id] = exc.remaining_wh
                    wh = min(want, exc.remaining_wh)
                    continue
                if exc.reason in (Reason.INSUFFICIENT, Reason.NOT_FOUND, Reason.EXPIRED):
                    self.remaining_seen[order.order_id] = 0
                return 0
            except P2pdError as exc:  # NotConnected / PeerGone: the session went away
                self.counters["take_failed:NOT_CONNECTED"] += 1
                log.debug("agent_take_failed", order=order.order_id.hex(), error=str(exc))
                return 0
            self.counters["takes"] += 1
            self.counters["taken_wh"] += receipt.terms.wh
            self.remaining_seen[order.order_id] = known - receipt.terms.wh
            return receipt.terms.wh
        return 0

    async def _ensure_session(self, member_id: str, plan: SlotPlan) -> bool:
        if member_id in self.market.node.sessions:
            return True
        if self.dial is None or member_id in plan.dial_tried:
            self.counters["no_session"] += 1
            return False
        plan.dial_tried.add(member_id)
        self.counters["dials"] += 1
        try:
            await self.market.dial_for_trade(member_id, self.dial)
        except (P2pdError, OSError, trio.TooSlowError, KeyError) as exc:
            self.counters["dial_failed"] += 1
            log.debug("agent_dial_failed", peer=member_id, error=str(exc))
            return False
        return member_id in self.market.node.sessions

    # --- the loop -------------------------------------------------------------------

    def next_tick_after(self, now: float) -> float:
        """The first tick time strictly after ``now`` (market time)."""
        step = self.slot_len / self.config.ticks_per_slot
        k = int((now - self.phase * step) // step) + 1
        return k * step + self.phase * step

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick forever on the market clock.

        Each tick gets one slot of market time as its budget and stops
        starting new trades when it is spent (ticks it overran are skipped). It is never cancelled mid-trade:
        a send cut off half way would corrupt the session's stream.
        """
        task_status.started()
        while True:
            at = self.next_tick_after(self.clock.now())
            await trio.sleep_until(trio_deadline(self.clock, at))
            await self.tick(int(self.clock.now()), deadline=at + self.slot_len)


def _reason(exc: TradeError) -> str:
    return exc.reason.name if isinstance(exc.reason, Reason) else str(exc.reason)
