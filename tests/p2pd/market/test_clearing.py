"""The broker's uniform-price clearing: hand-checked books and properties."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.market.clearing import BookOrder, clear


def oid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_simple_cross_trades_at_the_midpoint_of_the_marginal_pair() -> None:
    book = [BookOrder(oid(1), "sell", 1000, 50_000), BookOrder(oid(2), "sell", 1000, 80_000),
            BookOrder(oid(3), "buy", 1500, 120_000), BookOrder(oid(4), "buy", 1000, 60_000)]
    r = clear(book)
    # bid 3 (120k) takes ask 1 (50k) 1000 Wh, then ask 2 (80k) 500 Wh; bid 4 (60k) < ask 2 (80k)
    assert [(m.buy_id, m.sell_id, m.wh) for m in r.matches] == [(oid(3), oid(1), 1000), (oid(3), oid(2), 500)]
    assert r.volume_wh == 1500
    assert r.price == (80_000 + 120_000) // 2


def test_no_cross_no_trade() -> None:
    r = clear([BookOrder(oid(1), "sell", 1000, 90_000), BookOrder(oid(2), "buy", 1000, 89_999)])
    assert r.price is None and r.matches == () and r.volume_wh == 0


def test_equal_prices_trade_at_that_price_and_rounding_floors() -> None:
    r = clear([BookOrder(oid(1), "sell", 333, 93_001), BookOrder(oid(2), "buy", 333, 93_002)])
    assert r.price == 93_001  # (93001 + 93002) // 2
    assert r.amount(r.matches[0]) == 333 * 93_001 // 1000


def test_ties_are_broken_by_the_seeded_hash_not_by_arrival() -> None:
    book = [BookOrder(oid(i), "sell", 100, 50_000) for i in range(1, 6)] + [BookOrder(oid(9), "buy", 250, 60_000)]
    a = clear(book, seed=b"s" * 32)
    b = clear(list(reversed(book)), seed=b"s" * 32)
    assert a == b and a.result_hash() == b.result_hash()
    c = clear(book, seed=b"t" * 32)
    assert c.volume_wh == a.volume_wh == 250


def test_duplicate_ids_and_bad_orders_are_refused() -> None:
    with pytest.raises(ValueError):
        clear([BookOrder(oid(1), "sell", 1, 1), BookOrder(oid(1), "buy", 1, 1)])
    with pytest.raises(ValueError):
        clear([BookOrder(oid(1), "sell", 0, 1)])
    with pytest.raises(ValueError):
        clear([BookOrder(oid(1), "hold", 1, 1)])


orders = st.lists(
    st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 5000), st.integers(1, 200_000)),
    max_size=40)


@settings(max_examples=300, deadline=None)
@given(orders, st.binary(min_size=0, max_size=32))
def test_properties(raw: list[tuple[str, int, int]], seed: bytes) -> None:
    book = [BookOrder(oid(i), side, wh, price) for i, (side, wh, price) in enumerate(raw)]
    by_id = {o.order_id: o for o in book}
    r = clear(book, seed)
    assert r == clear(list(reversed(book)), seed)  # deterministic, order-independent
    filled: dict[bytes, int] = defaultdict(int)
    paid = received = 0
    for m in r.matches:
        buy, sell = by_id[m.buy_id], by_id[m.sell_id]
        assert buy.side == "buy" and sell.side == "sell" and m.wh > 0
        assert r.price is not None and sell.price <= r.price <= buy.price  # no trade beyond a limit
        filled[m.buy_id] += m.wh
        filled[m.sell_id] += m.wh
        paid += r.amount(m)
        received += r.amount(m)
    for order_id, wh in filled.items():
        assert wh <= by_id[order_id].wh  # never more than an order holds
    bought = sum(wh for k, wh in filled.items() if by_id[k].side == "buy")
    sold = sum(wh for k, wh in filled.items() if by_id[k].side == "sell")
    assert bought == sold == r.volume_wh and paid == received
    # Maximal: after clearing, no remaining bid crosses a remaining ask.
    rem_bids = [o.price for o in book if o.side == "buy" and filled[o.order_id] < o.wh]
    rem_asks = [o.price for o in book if o.side == "sell" and filled[o.order_id] < o.wh]
    if rem_bids and rem_asks:
        assert max(rem_bids) < min(rem_asks)
