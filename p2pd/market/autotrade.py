"""The automatic agent's rules: its prices, its plans, which orders it picks.

The agent (p2pd/roles/agent.py) trades a member's forecast surplus or need;
what it may do is decided here. Invariant (checked by :class:`AgentConfig`):
a seller never sells below the supplier's export tariff and a buyer never
pays more than the retail tariff, so every trade the agent makes leaves both
parties at least as well off as trading with the supplier. No I/O: ``now``
and the book are arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from p2pd.market.book import BookEntry
from p2pd.market.errors import MarketError
from p2pd.market.settlement import DEFAULT_EXPORT_PRICE, DEFAULT_IMPORT_PRICE


class AgentConfigError(MarketError, ValueError):
    """An :class:`AgentConfig` breaks an invariant; the message names the field."""


@dataclass(frozen=True)
class AgentConfig:
    """How the agent trades. Prices are money units per kWh (docs/settlement.md).

    ``None`` prices take their defaults: ask = midpoint of the export and
    retail tariffs, floor = export tariff, ceiling = retail tariff, bid =
    midpoint. Raises :class:`AgentConfigError` if a price breaks the
    better-than-the-supplier invariant or a count is out of range.
    """

    enabled: bool = True
    lead_slots: int = 2
    """How many slots ahead of the current one the agent trades."""
    min_wh: int = 20
    """Smallest surplus worth offering, or need worth buying."""
    export_tariff: int = DEFAULT_EXPORT_PRICE
    retail_tariff: int = DEFAULT_IMPORT_PRICE
    sell_price: int | None = None
    sell_floor: int | None = None
    buy_ceiling: int | None = None
    post_bids: bool = False
    bid_price: int | None = None
    ticks_per_slot: int = 3
    """Ticks per slot: later ticks buy what earlier offers made available."""
    max_takes_per_tick: int = 16

    def __post_init__(self) -> None:
        mid = (self.export_tariff + self.retail_tariff) // 2
        for name, default in (("sell_price", mid), ("sell_floor", self.export_tariff),
                              ("buy_ceiling", self.retail_tariff), ("bid_price", mid)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        problems = []
        if not 0 < self.export_tariff <= self.retail_tariff:
            problems.append("need 0 < export_tariff <= retail_tariff")
        if self.floor < self.export_tariff:
            problems.append(f"sell_floor {self.floor} is below the export tariff {self.export_tariff}")
        if self.ask < self.floor:
            problems.append(f"sell_price {self.ask} is below sell_floor {self.floor}")
        if self.ceiling > self.retail_tariff:
            problems.append(f"buy_ceiling {self.ceiling} is above the retail tariff {self.retail_tariff}")
        if self.bid > self.ceiling:
            problems.append(f"bid_price {self.bid} is above buy_ceiling {self.ceiling}")
        if self.bid <= 0:
            problems.append("bid_price must be positive")
        if self.lead_slots < 1 or self.min_wh < 1 or self.ticks_per_slot < 1 or self.max_takes_per_tick < 1:
            problems.append("lead_slots, min_wh, ticks_per_slot and max_takes_per_tick must be >= 1")
        if problems:
            raise AgentConfigError("agent config: " + "; ".join(problems))

    @property
    def ask(self) -> int:
        assert self.sell_price is not None
        return self.sell_price

    @property
    def floor(self) -> int:
        assert self.sell_floor is not None
        return self.sell_floor

    @property
    def ceiling(self) -> int:
        assert self.buy_ceiling is not None
        return self.buy_ceiling

    @property
    def bid(self) -> int:
        assert self.bid_price is not None
        return self.bid_price


@dataclass
class SlotPlan:
    """What the agent did for one target slot."""

    offer_posted: bool = False
    bid_posted: bool = False
    bought_wh: int = 0
    sold_wh: int = 0
    dial_tried: set[str] = field(default_factory=set)


def open_slots(now: int, slot_len: int, gate_closure: int, lead_slots: int) -> list[int]:
    """Slots from the next one up to ``lead_slots`` ahead that still take orders at ``now``."""
    cur = now // slot_len * slot_len
    return [cur + k * slot_len for k in range(1, lead_slots + 1) if now < cur + k * slot_len - gate_closure]


def candidates(book: Iterable[BookEntry], *, target: int, side: str, price_ok: Callable[[int], bool],
               me: str, now: int, remaining_seen: Mapping[bytes, int], salt: bytes,
               highest_first: bool) -> list[BookEntry]:
    """Others' live orders of ``side`` for slot ``target`` at an acceptable price, best first.

    Orders whose owner told us nothing is left are skipped. Ties in price are
    broken by a keyed hash (``salt`` is per member), so a community's buyers
    do not all queue at the same seller.
    """
    found = [
        e for e in book
        if e.order.side == side and e.order.slot_start == target and e.order.member_id != me
        and e.order.expiry > now and price_ok(e.order.price)
        and remaining_seen.get(e.order.order_id, 1) > 0
    ]
    sign = -1 if highest_first else 1
    found.sort(key=lambda e: (sign * e.order.price,
                              hashlib.blake2b(e.order.order_id, key=salt[:16], digest_size=8).digest()))
    return found
