"""Our own new orders: the slot rules, refused in words (p2pd/market/posting.py)."""

from __future__ import annotations

import pytest

from p2pd.market.errors import Refusal
from p2pd.market.posting import check_new_order, duration, latest_slot, next_open_slot, utc
from p2pd.market.rules import MarketRules
from protocol import Reason

RULES = MarketRules()  # 900 s slots, gate closure 300 s, 48 h ahead
NOW = 1_800_000_000  # 2027-01-15 08:00 UTC, a slot boundary


def test_times_and_durations_read_as_people_write_them() -> None:
    assert utc(NOW) == "2027-01-15 08:00 UTC" and utc(NOW + 5) == "2027-01-15 08:00:05 UTC"
    assert [duration(s) for s in (172_800, 900, 90)] == ["48 h", "15 min", "90 s"]
    # At 08:00 the 08:00 slot's gate closed at 07:55; 08:15 closes at 08:10.
    assert next_open_slot(RULES, NOW) == NOW + 900
    assert next_open_slot(RULES, NOW + 599) == NOW + 900
    assert next_open_slot(RULES, NOW + 600) == NOW + 1800
    assert latest_slot(RULES, NOW + 10) == NOW + 172_800


def test_a_new_order_gets_gate_closure_as_expiry() -> None:
    assert check_new_order(NOW + 900, 90_000, None, RULES, NOW) == NOW + 600
    assert check_new_order(NOW + 1800, 90_000, NOW + 60, RULES, NOW) == NOW + 60


@pytest.mark.parametrize(("slot", "price", "expiry", "reason", "message"), [
    (NOW + 900, 0, None, Reason.OUT_OF_BOUNDS,
     "price must be at least 1 money unit per kWh (0.000001 of the currency)"),
    (NOW + 960, 1, None, Reason.OUT_OF_BOUNDS,
     "2027-01-15 08:16 UTC is not the start of a slot: slots start every 15 min "
     "(2027-01-15 08:15 UTC, 2027-01-15 08:30 UTC, ...)"),
    (NOW, 1, None, Reason.EXPIRED,
     "trading for the slot 2027-01-15 08:00 UTC closed at 2027-01-15 07:55 UTC (gate closure: 5 min "
     "before each slot); the next open slot starts 2027-01-15 08:15 UTC"),
    (NOW + 172_800 + 900, 1, None, Reason.OUT_OF_BOUNDS,
     "slot too far ahead: at most 48 h (the latest slot now starts 2027-01-17 08:00 UTC)"),
    (NOW + 1800, 1, NOW, Reason.EXPIRED, "expiry 2027-01-15 08:00 UTC is in the past"),
    (NOW + 1800, 1, NOW + 1600, Reason.OUT_OF_BOUNDS,
     "expiry 2027-01-15 08:26:40 UTC is after the slot's gate closure 2027-01-15 08:25 UTC"),
])
def test_refusals_name_the_rule(slot: int, price: int, expiry: int | None, reason: Reason,
                                message: str) -> None:
    with pytest.raises(Refusal) as refused:
        check_new_order(slot, price, expiry, RULES, NOW)
    assert (refused.value.reason, refused.value.message) == (reason, message)
