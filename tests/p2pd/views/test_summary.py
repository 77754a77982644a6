"""The household summary's pure parts: totals by period, the trading slot, the day chart."""

from __future__ import annotations

from p2pd.views.summary import (
    day_chart,
    month_start,
    next_month,
    slot_orders,
    totals,
    trading_slot,
)
from store import ReadingRecord, ReceiptRecord, StatementRecord

DAY0 = 1_800_057_600  # 2027-01-16T00:00:00Z


def receipt(seller: str, buyer: str, slot: int, wh: int, price: int = 90_000) -> ReceiptRecord:
    return ReceiptRecord(bytes(16), bytes(16), seller, buyer, slot, 900, wh, price, wh, b"", slot - 600)


def test_totals_count_our_side_within_the_period() -> None:
    rs = [receipt("me", "bob", DAY0 + 3600, 400), receipt("ann", "me", DAY0 + 7200, 250, 100_000),
          receipt("ann", "bob", DAY0 + 3600, 999), receipt("me", "bob", DAY0 - 900, 50)]
    st = [StatementRecord("me", DAY0 + 3600, 900, b"", {"saving": 7000, "bill": 10, "bill_without_p2p": 20}),
          StatementRecord("me", DAY0 - 900, 900, b"", {"saving": 1})]
    t = totals(rs, st, "me", DAY0, DAY0 + 86400)
    assert (t.bought_wh, t.sold_wh, t.trades) == (250, 400, 2)
    assert (t.cost, t.revenue) == (25_000, 36_000)
    assert (t.saving, t.bill, t.bill_without_p2p, t.settled_slots) == (7000, 10, 20, 1)


def test_trading_slot_is_the_first_with_an_open_gate() -> None:
    assert trading_slot(DAY0, 900, 300) == DAY0 + 900
    assert trading_slot(DAY0 + 599, 900, 300) == DAY0 + 900
    assert trading_slot(DAY0 + 600, 900, 300) == DAY0 + 1800
    assert month_start(DAY0 + 5) == 1_798_761_600 and next_month(1_798_761_600) == 1_801_440_000
    assert next_month(1_827_619_200) == 1_830_297_600  # December 2027 -> January 2028


def test_slot_orders_sum_what_is_left_and_take_the_best_price() -> None:
    book = [{"member": "me", "slot_start": 9, "side": "sell", "remaining_wh": 300, "price": 80},
            {"member": "me", "slot_start": 9, "side": "sell", "remaining_wh": 200, "price": 70},
            {"member": "me", "slot_start": 9, "side": "buy", "remaining_wh": 100, "price": 120},
            {"member": "x", "slot_start": 9, "side": "sell", "remaining_wh": 5, "price": 1},
            {"member": "me", "slot_start": 18, "side": "sell", "remaining_wh": 5, "price": 1}]
    s = slot_orders(book, "me", 9)
    assert (s.offer_wh, s.offer_price, s.bid_wh, s.bid_price) == (500, 70, 100, 120)
    assert slot_orders(book, "me", 27).offer_price is None


def test_day_chart_puts_metered_and_traded_energy_in_their_hours() -> None:
    readings = [ReadingRecord("m", DAY0 - 60, 1000, 0, None), ReadingRecord("m", DAY0 + 60, 1100, 0, None),
                ReadingRecord("m", DAY0 + 3700, 1300, 50, None),
                ReadingRecord("m", DAY0 + 3800, 1300, 80, None)]
    bars = day_chart(readings, [receipt("me", "b", DAY0 + 3600, 40), receipt("a", "me", DAY0, 7)],
                     "me", DAY0)
    assert len(bars) == 24
    assert (bars[0].import_wh, bars[0].bought_wh) == (100, 7)
    assert (bars[1].import_wh, bars[1].export_wh, bars[1].sold_wh) == (200, 80, 40)
