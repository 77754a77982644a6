"""p2pd/market/sharing.py: curves on a grid, merged steps, shares, the clearing of sums."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.market.clearing import BookOrder, clear
from p2pd.market.sharing import (
    RoundShares,
    RoundSums,
    add,
    assign,
    at_price,
    clear_curves,
    curve,
    fill_bounds,
    fills,
    grid_steps,
    in_the_money,
    price_grid,
    snap,
    split,
    valid_curves,
)
from protocol import MODULUS, Delegation, SigningKey

KEY = SigningKey.from_seed(bytes([7]) * 32)
GRID = price_grid(40_000, 140_000, 10_000)  # 40k, 50k, ..., 140k: 11 points


def delegation(client: str, floor: int = 40_000, ceiling: int = 140_000) -> Delegation:
    return Delegation.create(KEY, delegation_id=bytes(16), principal=client, agent="rep", max_wh_per_slot=10**6,
                             min_sell_price=floor, max_buy_price=ceiling, valid_from=0, valid_until=2**40)


def test_grid_and_snapping_never_cross_a_limit() -> None:
    assert GRID[0] == 40_000 and GRID[-1] == 140_000 and len(GRID) == 11
    assert price_grid(47_000, 139_000, 1000)[-1] == 139_000
    assert snap("sell", 55_000, GRID) == 2 and GRID[2] == 60_000  # a seller's floor rounds up
    assert snap("buy", 55_000, GRID) == 1 and GRID[1] == 50_000  # a buyer's ceiling rounds down
    assert snap("sell", 10_000, GRID) == 0 and snap("buy", 900_000, GRID) == 10
    assert snap("sell", 150_000, GRID) is None and snap("buy", 30_000, GRID) is None


def test_steps_of_one_household_are_merged_towards_stricter_prices() -> None:
    wanted = {"a": 100, "b": 200, "c": 300, "d": 400, "e": 500, "x": -700, "y": -800, "z": -900}
    limits = {"a": (50_000, 0), "b": (60_000, 0), "c": (80_000, 0), "d": (80_000, 0), "e": (120_000, 0),
              "x": (0, 130_000), "y": (0, 90_000), "z": (0, 90_000)}
    ds = {m: delegation(m, f, c) for m, (f, c) in limits.items()}
    steps, held = grid_steps(wanted, ds, GRID, 2)
    # a (50k) and b (60k) sell together at 60k; c and d at 80k; e, alone at 120k,
    # joins c and d there, at 120k. x (130k) buys with y and z at 90k.
    assert steps == {("sell", GRID.index(60_000)): {"a": 100, "b": 200},
                     ("sell", GRID.index(120_000)): {"c": 300, "d": 400, "e": 500},
                     ("buy", GRID.index(90_000)): {"x": 700, "y": 800, "z": 900}}
    assert held == {}
    # One household on a side cannot be hidden: it is held back.
    steps, held = grid_steps({"a": 100, "x": -700, "y": -800}, ds, GRID, 2)
    assert held == {"a": 100} and all(side == "buy" for side, _ in steps)
    assert grid_steps({"a": 100}, ds, GRID, 1)[0] == {("sell", 1): {"a": 100}}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]),
                       st.tuples(st.integers(-5000, 5000).filter(bool), st.integers(30_000, 150_000)),
                       max_size=12), st.integers(1, 4))
def test_every_step_has_enough_households_and_keeps_every_limit(
        wishes: dict[str, tuple[int, int]], k: int) -> None:
    wanted = {m: w for m, (w, _) in wishes.items()}
    ds = {m: delegation(m, limit, limit) for m, (_, limit) in wishes.items()}
    steps, held = grid_steps(wanted, ds, GRID, k)
    placed: dict[str, int] = {}
    for (side, i), members in steps.items():
        assert len(members) >= k
        for m, wh in members.items():
            assert side == ("sell" if wanted[m] > 0 else "buy")
            limit = wishes[m][1]
            assert GRID[i] >= limit if side == "sell" else GRID[i] <= limit
            placed[m] = wh
    assert placed.keys().isdisjoint(held)
    assert placed | held == {m: abs(w) for m, w in wanted.items()}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=20), st.integers(1, 6), st.integers(0, 2**32))
def test_shares_add_up_to_the_curve_and_none_of_them_is_it(values: list[int], others: int, seed: int) -> None:
    rng = random.Random(seed)
    own, theirs = split(values, others, rng.randbytes)
    assert len(theirs) == others and all(len(s) == len(values) for s in theirs)
    assert add([own, *theirs]) == values
    assert all(0 <= v < MODULUS for s in (own, *theirs) for v in s)


def test_sums_of_shares_give_the_aggregate_and_only_it() -> None:
    rng = random.Random(1)
    curves = {"r1": [0, 5, 5, 9, 0, 0, 0, 0], "r2": [1, 1, 1, 1, 0, 0, 0, 0], "r3": [0, 0, 0, 0, 7, 7, 3, 3]}
    members = tuple(sorted(curves))
    split_up = {m: split(curves[m], len(members) - 1, rng.randbytes) for m in members}
    rounds = {m: RoundShares(m, members, split_up[m][0]) for m in members}
    for m in members:
        others = [o for o in members if o != m]
        for o, share in zip(others, split_up[m][1], strict=True):
            assert rounds[o].receive(m, share)
    assert not rounds["r1"].receive("r1", [0] * 8) and not rounds["r1"].receive("r2", [0] * 8)
    sums = RoundSums(members, 8)
    for m, r in rounds.items():
        assert r.complete
        senders, total = r.total()
        assert senders == members and total not in curves.values()
        assert sums.add(m, senders, total)
    assert sums.complete
    assert sums.aggregate() == ([1, 6, 6, 10], [7, 7, 3, 3])


def test_an_incomplete_round_goes_on_without_those_who_dropped_out() -> None:
    everyone = ("a", "b", "c", "d")
    sums = RoundSums(everyone, 4)
    assert not sums.add("x", ("x",), [0] * 4)  # not a participant
    assert sums.add("a", ("a", "b", "c", "d"), [0] * 4)
    assert not sums.add("a", ("a", "b", "c", "d"), [0] * 4)  # twice
    assert sums.add("b", ("a", "b", "d"), [0] * 4)  # c's share never reached b
    assert sums.add("c", ("a", "c", "d"), [0] * 4)
    assert not sums.complete  # d never sent its sum, and b lacks c's share
    assert sums.survivors() == ("a", "b")  # c breaks with b; then b or c must go: the larger id
    # A member that received nothing goes first, not everyone it failed to hear from.
    lonely = RoundSums(everyone, 4)
    lonely.add("a", ("a",), [0] * 4)
    for m in "bcd":
        lonely.add(m, tuple(sorted({"b", "c", "d", "a"})), [0] * 4)
    assert lonely.survivors() == ("b", "c", "d")


def open_book(supply_steps: dict[int, int], demand_steps: dict[int, int]) -> list[BookOrder]:
    rng = random.Random(2)
    return ([BookOrder(rng.randbytes(16), "sell", wh, GRID[k]) for k, wh in supply_steps.items()]
            + [BookOrder(rng.randbytes(16), "buy", wh, GRID[k]) for k, wh in demand_steps.items()])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 10), st.integers(1, 5000), max_size=6),
       st.dictionaries(st.integers(0, 10), st.integers(1, 5000), max_size=6))
def test_clearing_the_sums_trades_what_the_open_auction_trades(
        supply_steps: dict[int, int], demand_steps: dict[int, int]) -> None:
    steps = {("sell", k): {f"s{k}": wh} for k, wh in supply_steps.items()} | {
        ("buy", k): {f"b{k}": wh} for k, wh in demand_steps.items()}
    c = curve(steps, len(GRID))
    supply, demand = c[: len(GRID)], c[len(GRID):]
    assert valid_curves(supply, demand)
    got = clear_curves(GRID, supply, demand)
    book = clear(open_book(supply_steps, demand_steps), b"seed")
    assert got.volume_wh == book.volume_wh
    if book.price is None:
        assert got.price is None
        return
    assert got.price is not None
    # The largest volume, at a price that every seller in the money and every
    # buyer in the money accepts.
    assert max(min(s, d) for s, d in zip(supply, demand, strict=True)) == got.volume_wh
    assert at_price(GRID, supply, demand, got.price) == (got.supply_at, got.demand_at)
    sellers, buyers = in_the_money(steps, GRID, "sell", got.price), in_the_money(steps, GRID, "buy", got.price)
    assert sum(sellers.values()) == got.supply_at and sum(buyers.values()) == got.demand_at


def test_the_price_is_the_midpoint_of_the_best_interval_like_the_open_auction() -> None:
    # Sellers at the export tariff, buyers at the retail one: both auctions
    # trade at the midpoint (the S3 simulation's community).
    grid = price_grid(47_000, 139_000, 1000)
    steps = {("sell", 0): {"a": 700, "b": 300}, ("buy", len(grid) - 1): {"x": 600}}
    c = curve(steps, len(grid))
    got = clear_curves(grid, c[: len(grid)], c[len(grid):])
    book = clear([BookOrder(b"s" * 16, "sell", 1000, 47_000), BookOrder(b"b" * 16, "buy", 600, 139_000)])
    assert (got.price, got.volume_wh, got.supply_at, got.demand_at) == (book.price, 600, 1000, 600) == (
        93_000, 600, 1000, 600)
    assert clear_curves(grid, [0] * len(grid), [5] * len(grid)).price is None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 10_000), min_size=1), st.data())
def test_fills_add_up_and_stay_within_each_share(claims: dict[str, int], data: st.DataObject) -> None:
    total = sum(claims.values())
    volume = data.draw(st.integers(0, total))
    got = fills(claims, total, volume)
    assert sum(got.values()) == volume
    for m, wh in got.items():
        lo, hi = fill_bounds(claims[m], total, volume)
        assert lo <= wh <= hi
    # A participant that vanished: the others never get more than their share.
    gone = data.draw(st.sampled_from(sorted(claims)))
    rest = {m: c for m, c in claims.items() if m != gone}
    for m, wh in fills(rest, total, volume).items():
        assert wh <= fill_bounds(claims[m], total, volume)[1]
    with pytest.raises(ValueError):
        fills({"a": total + 1}, total, volume)


def test_pairs_never_trade_with_themselves() -> None:
    pairs = assign({"a": 500, "b": 300}, {"a": 200, "c": 600})
    assert pairs == [("a", "c", 500), ("b", "a", 200), ("b", "c", 100)]
    assert assign({"a": 5}, {"a": 5}) == []
