"""The S1 book and take rules (p2pd/market/book.py, take.py): plain synchronous tests."""

from __future__ import annotations

import dataclasses

import pytest
from p2pd_test_helpers import NOW, Community

from p2pd.market.book import OrderBook, check_order_terms
from p2pd.market.errors import Refusal
from p2pd.market.rules import MarketRules
from p2pd.market.take import BadAnswer, check_answer, check_take, countersign, terms_for_take
from protocol import Cancel, Order, Reason

RULES = MarketRules()
T = int(NOW)
SLOT = (T // 900 + 4) * 900
COM = Community()
ALICE, BOB, EVE = COM.member("alice"), COM.member("bob"), COM.member("eve", role="broker")


def order(who=ALICE, oid: bytes = b"o" * 16, *, side: str = "sell", wh: int = 1000, **kw: int) -> Order:  # type: ignore[no-untyped-def]
    fields = {"slot_start": SLOT, "slot_len": 900, "price": 90_000, "expiry": SLOT - 300, **kw}
    return Order.create(who.signing, order_id=oid, member_id=who.member_id, side=side, wh=wh, **fields)


def book() -> OrderBook:
    return OrderBook(COM.policy(), RULES)


def test_book_accepts_once_and_counts_refusals_by_reason() -> None:
    b = book()
    o = order()
    assert b.accept(o, ALICE.credential, T) is not None
    assert b.accept(o, ALICE.credential, T) is None and b.counters["orders_duplicate"] == 1
    forged = dataclasses.replace(order(oid=b"f" * 16), wh=5)
    assert b.accept(forged, ALICE.credential, T) is None
    assert b.counters["orders_rejected:BAD_SIGNATURE"] == 1
    assert b.accept(order(BOB, b"x" * 16), ALICE.credential, T) is None
    assert b.counters["orders_rejected:NOT_A_MEMBER"] == 1
    assert b.accept(order(EVE, b"y" * 16), EVE.credential, T) is None
    assert b.counters["orders_rejected:BAD_ROLE"] == 1


@pytest.mark.parametrize(("change", "reason", "text"), [
    ({"slot_len": 1800}, Reason.OUT_OF_BOUNDS, "slot length must be 900 s"),
    ({"expiry": T}, Reason.EXPIRED, "order has expired"),
    ({"expiry": SLOT}, Reason.OUT_OF_BOUNDS, "order expires after gate closure"),
    ({"slot_start": SLOT + 3 * 86400, "expiry": SLOT}, Reason.OUT_OF_BOUNDS, "at most 48 h"),
])
def test_order_terms_name_the_rule(change: dict[str, int], reason: Reason, text: str) -> None:
    with pytest.raises(Refusal) as info:
        check_order_terms(order(**change), RULES, T)
    assert info.value.reason is reason and text in str(info.value)


def test_cancel_withdraws_but_keeps_the_order_for_retries_until_expiry() -> None:
    b = book()
    o = order()
    b.accept(o, ALICE.credential, T)
    assert not b.apply_cancel(Cancel.create(BOB.signing, order_id=o.order_id, member_id="bob", issued_at=T))
    assert b.apply_cancel(Cancel.create(ALICE.signing, order_id=o.order_id, member_id="alice", issued_at=T))
    assert o.order_id not in b.live and b.entry_for_take(o.order_id, retry=False) is None
    assert b.entry_for_take(o.order_id, retry=True) is not None
    assert b.accept(o, ALICE.credential, T) is None  # late gossip of a cancelled order
    b.prune(o.expiry)
    assert b.entry_for_take(o.order_id, retry=True) is None and not b.cancelled


def test_take_round_trip_and_every_owner_check() -> None:
    b = book()
    entry = b.accept(order(), ALICE.credential, T)
    assert entry is not None
    terms = terms_for_take(entry, "bob", b"t" * 16, 400, T)
    assert (terms.seller, terms.buyer, terms.wh) == ("alice", "bob", 400)
    sig = terms.sign(BOB.signing)
    check_take(entry.order, terms, "bob", BOB.credential.sign_pk, sig, T)
    receipt = countersign(terms, ALICE.signing, "alice", sig)
    receipt.verify(ALICE.credential.sign_pk, BOB.credential.sign_pk)
    check_answer(terms, receipt, sig, "alice", ALICE.credential.sign_pk)
    with pytest.raises(Refusal, match="terms do not match"):
        check_take(entry.order, dataclasses.replace(terms, price=1), "bob", BOB.credential.sign_pk, sig, T)
    with pytest.raises(Refusal, match="taker signature"):
        check_take(entry.order, terms, "bob", ALICE.credential.sign_pk, sig, T)
    with pytest.raises(Refusal, match="expired"):
        check_take(entry.order, terms, "bob", BOB.credential.sign_pk, sig, entry.order.expiry)
    with pytest.raises(BadAnswer, match="other terms"):
        check_answer(dataclasses.replace(terms, wh=1), receipt, sig, "alice", ALICE.credential.sign_pk)
    with pytest.raises(BadAnswer, match="our signature"):
        check_answer(terms, receipt, bytes(64), "alice", ALICE.credential.sign_pk)
    with pytest.raises(BadAnswer, match="owner's signature"):
        check_answer(terms, receipt, sig, "alice", BOB.credential.sign_pk)
    with pytest.raises(Refusal) as own:
        terms_for_take(entry, "alice", b"u" * 16, 1, T)
    assert own.value.reason is Reason.BAD_ROLE


def test_live_orders_are_indexed_by_slot_side_and_expiry() -> None:
    b = book()
    sell = b.accept(order(oid=b"s" * 16), ALICE.credential, T)
    buy = b.accept(order(BOB, b"b" * 16, side="buy"), BOB.credential, T)
    later = b.accept(order(oid=b"l" * 16, slot_start=SLOT + 900, expiry=SLOT + 600), ALICE.credential, T)
    assert list(b.live.for_slot(SLOT, "sell")) == [sell]
    assert list(b.live.for_slot(SLOT, "buy")) == [buy]
    assert list(b.live.for_slot(SLOT + 900, "sell")) == [later]
    # Writes through the dict keep the index (tests and callers use it as a dict).
    assert later is not None
    b.live[b"x" * 16] = later
    assert len(list(b.live.for_slot(SLOT + 900, "sell"))) == 2
    b.live.pop(b"x" * 16)
    del b.live[b"b" * 16]
    assert list(b.live.for_slot(SLOT, "buy")) == []
    # Pruning drops what expired by then, and only that.
    assert b.prune(SLOT - 300) == 1 and list(b.live) == [b"l" * 16]
    assert b.prune(SLOT + 600) == 1 and not b.live and list(b.live.for_slot(SLOT + 900, "sell")) == []


def test_cancel_markers_are_pruned_at_their_expiry() -> None:
    b = book()
    o = order()
    b.accept(o, ALICE.credential, T)
    assert b.apply_cancel(Cancel.create(ALICE.signing, order_id=o.order_id, member_id="alice", issued_at=T))
    assert o.order_id in b.cancelled and o.order_id in b.withdrawn
    b.prune(o.expiry - 1)
    assert o.order_id in b.cancelled
    b.prune(o.expiry)
    assert o.order_id not in b.cancelled and o.order_id not in b.withdrawn
