"""Uniform-price double auction for one delivery slot (scenarios S3 and S4).

Pure and deterministic: integers in, integers out, no clock, no I/O. Anyone
holding a slot's public order book (docs/protocol.md section 15) re-runs
:func:`clear` and must get the same matches, price and result hash.

Rules (docs/protocol.md, "Clearing"):

1. Bids are ranked by price, highest first; asks by price, lowest first. Ties
   at one price are broken by ``tiebreak = BLAKE2b-128(seed || order_id)``,
   smallest first, where ``seed`` is the book hash. The book hash is fixed
   only when the gate closes, so nobody can pick an order id that wins ties.
2. The best remaining bid is matched with the best remaining ask while the
   bid's price is at least the ask's; each match is for the smaller of the two
   remaining quantities. This maximises the traded volume.
3. Every match trades at one uniform price (pay-as-clear):
   ``price = (last_ask + last_bid) // 2``, where ``last_ask`` and
   ``last_bid`` are the limit prices of the marginal (last) match. Since
   every matched ask is at most ``last_ask`` and every matched bid at least
   ``last_bid``, no party trades beyond its limit.
4. Money per match is ``wh * price // 1000`` (the same rule as S1 receipts):
   what the buyer pays is exactly what the seller gets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack


@dataclass(frozen=True, slots=True)
class BookOrder:
    """One order as the auction sees it: id, ``"buy"``/``"sell"``, Wh, price per kWh."""

    order_id: bytes
    side: str
    wh: int
    price: int


@dataclass(frozen=True, slots=True)
class Match:
    buy_id: bytes
    sell_id: bytes
    wh: int


@dataclass(frozen=True)
class ClearingResult:
    """``price`` is None when nothing crosses; ``matches`` in matching order."""

    price: int | None
    volume_wh: int
    matches: tuple[Match, ...]

    def result_hash(self) -> bytes:
        """BLAKE2b-256 of ``pack([price or 0, volume, [[buy_id, sell_id, wh], ...]])``."""
        body = [self.price or 0, self.volume_wh, [[m.buy_id, m.sell_id, m.wh] for m in self.matches]]
        return hashlib.blake2b(msgpack.packb(body, use_bin_type=True), digest_size=32).digest()

    def amount(self, match: Match) -> int:
        assert self.price is not None
        return match.wh * self.price // 1000


def tiebreak(seed: bytes, order_id: bytes) -> bytes:
    return hashlib.blake2b(seed + order_id, digest_size=16).digest()


def book_hash(encoded_orders: Iterable[bytes]) -> bytes:
    """BLAKE2b-256 over the book: ``pack(sorted encoded orders)``.

    Sorting makes the hash independent of arrival order.
    """
    return hashlib.blake2b(msgpack.packb(sorted(encoded_orders), use_bin_type=True),
                           digest_size=32).digest()


def clear(orders: Sequence[BookOrder], seed: bytes = b"") -> ClearingResult:
    """Clear one slot's book. Raises ValueError on a malformed order or a duplicate id."""
    bids: list[tuple[int, bytes, BookOrder]] = []
    asks: list[tuple[int, bytes, BookOrder]] = []
    seen: set[bytes] = set()
    for o in orders:
        if o.order_id in seen:
            raise ValueError(f"duplicate order id {o.order_id.hex()}")
        seen.add(o.order_id)
        if o.wh <= 0 or o.price <= 0:
            raise ValueError("quantities and prices must be positive")
        if o.side == "buy":
            bids.append((-o.price, tiebreak(seed, o.order_id), o))
        elif o.side == "sell":
            asks.append((o.price, tiebreak(seed, o.order_id), o))
        else:
            raise ValueError(f"bad side {o.side!r}")
    bids.sort(key=lambda t: (t[0], t[1]))
    asks.sort(key=lambda t: (t[0], t[1]))
    matches: list[Match] = []
    i = j = 0
    bid_left = bids[0][2].wh if bids else 0
    ask_left = asks[0][2].wh if asks else 0
    last_bid = last_ask = 0
    volume = 0
    while i < len(bids) and j < len(asks):
        bid, ask = bids[i][2], asks[j][2]
        if bid.price < ask.price:
            break
        q = min(bid_left, ask_left)
        matches.append(Match(bid.order_id, ask.order_id, q))
        volume += q
        last_bid, last_ask = bid.price, ask.price
        bid_left -= q
        ask_left -= q
        if bid_left == 0:
            i += 1
            bid_left = bids[i][2].wh if i < len(bids) else 0
        if ask_left == 0:
            j += 1
            ask_left = asks[j][2].wh if j < len(asks) else 0
    if not matches:
        return ClearingResult(None, 0, ())
    return ClearingResult((last_ask + last_bid) // 2, volume, tuple(matches))
