from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_drivers import Reading
from p2pd.market.settlement import (
    DEFAULT_EXPORT_PRICE,
    DEFAULT_IMPORT_PRICE,
    PRICE_SCALE,
    SettlementError,
    SignedStatement,
    SlotEnergy,
    Statement,
    Tariff,
    Trade,
    allocate,
    amount,
    settle_slot,
    sign_statement,
    slot_energy,
    verify_statement,
)
from protocol.canonical import pack, signed_bytes, unpack
from protocol.errors import DecodeError, SignatureError
from protocol.signing import SigningKey

SLOT = 1_750_000_500
A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))


def tid(n: int) -> bytes:
    return n.to_bytes(4, "big")


def settle(trades: list[Trade], energy: dict[bytes, SlotEnergy], tariff: Tariff = Tariff()):  # type: ignore[no-untyped-def]
    return settle_slot(SLOT, 900, trades, energy, tariff, settled_at=SLOT + 1000)


def test_scale_makes_slide_tariffs_exact() -> None:
    assert DEFAULT_IMPORT_PRICE / PRICE_SCALE == 0.139
    assert DEFAULT_EXPORT_PRICE / PRICE_SCALE == 0.047
    assert amount(1, 12_345) == 12  # 12.345 units, floored
    assert amount(1000, DEFAULT_IMPORT_PRICE) == 139_000


def test_full_delivery_hand_computed() -> None:
    res = settle([Trade(tid(1), A, B, 1000, 100_000)], {A: SlotEnergy(0, 1500), B: SlotEnergy(2000, 0)})
    (line,) = res.lines
    assert (line.delivered_wh, line.amount, line.shortfall_wh) == (1000, 100_000, 0)
    sa, sb = res.statements[A], res.statements[B]
    assert (sa.p2p_revenue, sa.supplier_export_wh, sa.supplier_export_revenue) == (100_000, 500, 23_500)
    assert (sa.bill, sa.bill_without_p2p, sa.saving) == (-123_500, -70_500, 53_000)
    assert (sb.p2p_cost, sb.supplier_import_wh, sb.supplier_import_cost) == (100_000, 1000, 139_000)
    assert (sb.bill, sb.bill_without_p2p, sb.saving) == (239_000, 278_000, 39_000)
    assert sa.lines == sb.lines == (line,)


def test_partial_delivery_pro_rata_and_buyer_limit() -> None:
    # A sold 600 Wh to B and 400 Wh to C but exported only 701 Wh: shares
    # 420.6 -> 421 (largest remainder) and 280.4 -> 280. C imported only 250.
    trades = [Trade(tid(1), A, B, 600, 90_000), Trade(tid(2), A, C, 400, 90_000)]
    res = settle(trades, {A: SlotEnergy(0, 701), B: SlotEnergy(1000, 0), C: SlotEnergy(250, 0)})
    assert [(ln.delivered_wh, ln.amount, ln.shortfall_wh) for ln in res.lines] == [
        (421, 37_890, 179),
        (250, 22_500, 150),
    ]
    sa = res.statements[A]
    assert (sa.p2p_sold_wh, sa.supplier_export_wh, sa.supplier_export_revenue) == (671, 30, 1_410)
    assert (sa.bill, sa.bill_without_p2p, sa.saving) == (-61_800, -32_947, 28_853)
    sc = res.statements[C]
    assert (sc.supplier_import_wh, sc.bill, sc.saving) == (0, 22_500, 250 * 139 - 22_500)


def test_member_who_bought_and_sold() -> None:
    # A sells 300 Wh to B and buys 200 Wh from C; its meter shows 150 Wh in, 300 Wh out.
    trades = [Trade(tid(1), A, B, 300, 120_000), Trade(tid(2), C, A, 200, 80_000)]
    energy = {A: SlotEnergy(150, 300), B: SlotEnergy(500, 0), C: SlotEnergy(0, 1000)}
    res = settle(trades, energy)
    assert [ln.delivered_wh for ln in res.lines] == [300, 150]
    sa = res.statements[A]
    assert (sa.p2p_bought_wh, sa.p2p_sold_wh, sa.p2p_cost, sa.p2p_revenue) == (150, 300, 12_000, 36_000)
    assert (sa.supplier_import_wh, sa.supplier_export_wh) == (0, 0)
    assert (sa.bill, sa.bill_without_p2p, sa.saving) == (-24_000, 6_750, 30_750)
    assert res.statements[B].lines == (res.lines[0],)
    assert res.statements[C].supplier_export_wh == 850


def test_member_without_trades_gets_plain_bill() -> None:
    res = settle([], {D: SlotEnergy(1234, 56)}, Tariff(150_000, 50_000, "EUR"))
    s = res.statements[D]
    assert s.currency == "EUR" and s.lines == ()
    assert s.bill == s.bill_without_p2p == 185_100 - 2_800 and s.saving == 0


@pytest.mark.parametrize(
    ("trades", "energy"),
    [
        ([Trade(tid(1), A, B, 10, 1)], {A: SlotEnergy(0, 10)}),  # buyer's readings missing
        ([Trade(tid(1), A, A, 10, 1)], {A: SlotEnergy(0, 10)}),
        ([Trade(tid(1), A, B, 0, 1)], {A: SlotEnergy(0, 0), B: SlotEnergy(0, 0)}),
        ([Trade(tid(1), A, B, 5, 1)] * 2, {A: SlotEnergy(0, 0), B: SlotEnergy(0, 0)}),
        ([], {A: SlotEnergy(-1, 0)}),
    ],
)
def test_bad_input(trades: list[Trade], energy: dict[bytes, SlotEnergy]) -> None:
    with pytest.raises(SettlementError):
        settle(trades, energy)


def test_allocate_largest_remainder_ties_by_id() -> None:
    assert allocate(10, [(b"b", 5), (b"a", 5), (b"c", 5)]) == {b"a": 4, b"b": 3, b"c": 3}
    assert allocate(5, [(b"x", 3), (b"y", 4)]) == {b"x": 2, b"y": 3}  # 15/7=2.14, 20/7=2.86
    assert allocate(100, [(b"x", 3)]) == {b"x": 3}


@given(st.integers(0, 10**6), st.lists(st.integers(1, 10**5), min_size=1, max_size=12))
def test_allocate_properties(total: int, claims: list[int]) -> None:
    keyed = [(i.to_bytes(2, "big"), c) for i, c in enumerate(claims)]
    shares = allocate(total, keyed)
    assert sum(shares.values()) == min(total, sum(claims))
    whole = sum(claims)
    for (k, c) in keyed:
        assert shares[k] <= c
        if total < whole:
            assert total * c // whole <= shares[k] <= total * c // whole + 1
    assert allocate(total, list(reversed(keyed))) == shares


members = st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=6, unique=True)


@st.composite
def slots(draw: st.DrawFn) -> tuple[list[Trade], dict[bytes, SlotEnergy]]:
    ms = draw(members)
    energy = {m: SlotEnergy(draw(st.integers(0, 5000)), draw(st.integers(0, 5000))) for m in ms}
    trades = []
    for n in range(draw(st.integers(0, 12))):
        seller, buyer = draw(st.sampled_from([(s, b) for s in ms for b in ms if s != b]))
        trades.append(Trade(tid(n), seller, buyer, draw(st.integers(1, 3000)), draw(st.integers(0, 400_000))))
    return trades, energy


@settings(max_examples=200, deadline=None)
@given(slots(), st.randoms(use_true_random=False))
def test_money_adds_up(slot: tuple[list[Trade], dict[bytes, SlotEnergy]], rnd: random.Random) -> None:
    trades, energy = slot
    res = settle(trades, energy)
    stmts = res.statements.values()
    # What buyers pay equals what sellers receive, to the unit.
    assert sum(s.p2p_cost for s in stmts) == sum(s.p2p_revenue for s in stmts)
    for ln in res.lines:
        assert 0 <= ln.delivered_wh <= ln.contracted_wh
        assert 0 <= ln.delivered_wh * ln.price - 1000 * ln.amount < 1000  # floor, < 1 unit
        # Both parties' statements carry the identical line.
        assert ln in res.statements[ln.seller].lines and ln in res.statements[ln.buyer].lines
    for m, s in res.statements.items():
        assert s.p2p_sold_wh <= energy[m].export_wh and s.p2p_bought_wh <= energy[m].import_wh
        assert s.supplier_import_wh >= 0 and s.supplier_export_wh >= 0
        assert s.saving == s.bill_without_p2p - s.bill
        assert Statement.decode(s.encode()) == s
    # Both nodes compute the same thing, whatever order they hold the trades in.
    shuffled = list(trades)
    rnd.shuffle(shuffled)
    assert settle(shuffled, dict(reversed(list(energy.items())))) == res


def test_sign_verify_and_storage_roundtrip() -> None:
    key = SigningKey.from_seed(bytes(32))
    other = SigningKey.from_seed(bytes([1]) * 32)
    res = settle([Trade(tid(1), key.public, other.public, 500, 110_000)],
                 {key.public: SlotEnergy(10, 600), other.public: SlotEnergy(900, 0)})
    signed = sign_statement(key, res.statements[key.public])
    verify_statement(signed)
    again = SignedStatement.decode(signed.encode())
    assert again == signed
    verify_statement(again)
    with pytest.raises(ValueError):
        sign_statement(key, res.statements[other.public])
    forged = SignedStatement(res.statements[other.public], signed.signature)
    with pytest.raises(SignatureError):
        verify_statement(forged)


def _statement() -> Statement:
    res = settle([Trade(tid(1), A, B, 1000, 100_000)], {A: SlotEnergy(0, 1500), B: SlotEnergy(2000, 0)})
    return res.statements[A]


def test_decode_rejects_tampered_totals() -> None:
    fields = _statement().fields()
    fields[18] += 1  # saving
    with pytest.raises(DecodeError, match="saving"):
        Statement.decode(signed_bytes("p2pd/statement/1", fields))
    fields = _statement().fields()
    fields[19][0][5] = 200_000  # price changed, amount not
    with pytest.raises(DecodeError, match="line amount"):
        Statement.decode(signed_bytes("p2pd/statement/1", fields))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        pack(["p2pd/order/1"]),
        pack(["p2pd/statement/1", 1, 2]),
        signed_bytes("p2pd/statement/1", [True] + _statement().fields()[1:]),
        signed_bytes("p2pd/statement/1", _statement().fields()[:-1] + ["x"]),
        _statement().encode() + b"\x00",
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Statement.decode(data)


def test_float_on_wire_rejected() -> None:
    import msgpack

    items = unpack(_statement().encode())
    items[2] = 900.0
    with pytest.raises(DecodeError):
        Statement.decode(msgpack.packb(items, use_bin_type=True))


def test_slot_energy_interpolates_between_readings() -> None:
    readings = [Reading(0, 1000, 50), Reading(600, 1600, 50), Reading(1200, 1700, 350)]
    # At 300: import 1300; at 900: import 1650, export 200.
    assert slot_energy(readings, 300, 900) == SlotEnergy(350, 150)
    assert slot_energy(readings, 0, 1200) == SlotEnergy(700, 300)
    with pytest.raises(SettlementError):
        slot_energy(readings, 900, 1500)
