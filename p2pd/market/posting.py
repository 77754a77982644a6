"""Our own new order: the slot rules it must meet, refused in words people can act on.

:func:`check_new_order` runs before we sign an order of ours (``p2pctl
post``, ``orders.post``); each refusal names the rule and the times it
implies, e.g. "slot too far ahead: at most 48 h (the latest slot now starts
2027-01-17 11:45 UTC)". The same rules, checked on gossiped orders, are
:func:`p2pd.market.book.check_order_terms`. ``now`` is an argument.
"""

from __future__ import annotations

from datetime import datetime, timezone

from p2pd.market.errors import Refusal
from p2pd.market.rules import MarketRules
from protocol import Reason


def utc(ts: int) -> str:
    """``1800000000`` -> ``"2027-01-15 08:00 UTC"`` (seconds shown only when not zero)."""
    d = datetime.fromtimestamp(ts, timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S UTC" if d.second else "%Y-%m-%d %H:%M UTC")


def duration(seconds: int) -> str:
    """``172800`` -> ``"48 h"``, ``900`` -> ``"15 min"``, ``90`` -> ``"90 s"``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def next_open_slot(rules: MarketRules, now: int) -> int:
    """The first slot still open for trading at ``now``: its gate closes after ``now``."""
    return ((now + rules.gate_closure) // rules.slot_len + 1) * rules.slot_len


def latest_slot(rules: MarketRules, now: int) -> int:
    """The last slot an order may be for at ``now`` (``max_ahead``)."""
    return (now + rules.max_ahead) // rules.slot_len * rules.slot_len


def check_new_order(slot_start: int, price: int, expiry: int | None, rules: MarketRules,
                    now: int) -> int:
    """Check a new order of ours; returns its expiry (gate closure unless given).

    Raises :class:`Refusal`: ``OUT_OF_BOUNDS`` for a price below one unit, a
    time that is not a slot start, a slot too far ahead or an expiry after
    gate closure; ``EXPIRED`` for a slot whose trading has closed or an
    expiry in the past.
    """
    slot, gate = rules.slot_len, rules.gate_closure
    if price < 1:
        raise Refusal(Reason.OUT_OF_BOUNDS, "price must be at least 1 money unit per kWh "
                                            "(0.000001 of the currency)")
    if slot_start % slot:
        before = slot_start // slot * slot
        raise Refusal(Reason.OUT_OF_BOUNDS,
                      f"{utc(slot_start)} is not the start of a slot: slots start every "
                      f"{duration(slot)} ({utc(before)}, {utc(before + slot)}, ...)")
    if expiry is None and slot_start - gate <= now:
        raise Refusal(Reason.EXPIRED,
                      f"trading for the slot {utc(slot_start)} closed at {utc(slot_start - gate)} "
                      f"(gate closure: {duration(gate)} before each slot); the next open slot "
                      f"starts {utc(next_open_slot(rules, now))}")
    if slot_start > now + rules.max_ahead:
        raise Refusal(Reason.OUT_OF_BOUNDS,
                      f"slot too far ahead: at most {duration(rules.max_ahead)} (the latest slot "
                      f"now starts {utc(latest_slot(rules, now))})")
    if expiry is None:
        return slot_start - gate
    if expiry <= now:
        raise Refusal(Reason.EXPIRED, f"expiry {utc(expiry)} is in the past")
    if expiry > slot_start - gate:
        raise Refusal(Reason.OUT_OF_BOUNDS,
                      f"expiry {utc(expiry)} is after the slot's gate closure {utc(slot_start - gate)}")
    return expiry
