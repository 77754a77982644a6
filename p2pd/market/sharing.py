"""Shared clearing (S3): curves in additive shares, cleared on their sum.

The rules of docs/protocol.md section 15, "Shared clearing", without I/O;
randomness comes in as ``random_bytes``.

A representative's **curve** over the community's price grid (strictly
ascending prices ``grid[0..m-1]``):

* each client's wish (from its reports and delegation, p2pd.market.agents)
  is placed on the grid: a seller's ``min_sell_price`` rounds *up* to the
  next grid price, a buyer's ``max_buy_price`` *down*, so nobody can trade
  beyond its limit; a wish outside the grid cannot trade and is held back;
* **steps with fewer than ``min_households`` clients are merged** into the
  next dearer step for sellers, the next cheaper one for buyers (moving a
  limit that way only makes it stricter); if a whole side has fewer than
  ``min_households`` clients it is held back. So no point of the curve
  moves with one household's Wh: every step is at least ``min_households``
  households;
* ``supply[k]`` is the Wh of sell steps at or below ``grid[k]``,
  ``demand[k]`` the Wh of buy steps at or above it.

**Sharing** (:func:`split`): ``n - 1`` uniformly random vectors modulo 2^64
go to the other participants; the owner keeps ``curve - sum(them)``. Any
``n - 1`` shares are independent of the curve. A participant's sum of the
shares it holds is again uniformly random on its own; all ``n`` sums add up
to the aggregate curve.

**Clearing the aggregate** (:func:`clear_curves`): the traded volume at a
price ``p`` is ``min(S(p), D(p))``; it is largest on an interval of grid
prices ``[lo, hi]`` (S rises, D falls); the price is ``(lo + hi) // 2``, as
the open auction takes the midpoint of the marginal limits
(p2pd/market/clearing.py). On the long side every participant is filled
pro rata in whole Wh (:func:`fills`, largest remainders); the short side is
filled completely. A participant checks its own fill against its own curve
and the public result (:func:`fill_bounds`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from p2pd.market.agents import split_fill
from protocol import MAX_CURVE_WH, MODULUS, AgentTerms, Delegation

RandomBytes = Callable[[int], bytes]
Steps = dict[tuple[str, int], dict[str, int]]
"""(side, grid index) -> client -> Wh."""


def price_grid(lo: int, hi: int, step: int) -> tuple[int, ...]:
    """``lo, lo + step, ...`` up to and including ``hi`` (``hi`` is always a point)."""
    if not 0 < lo <= hi or step <= 0:
        raise ValueError("need 0 < lo <= hi and step > 0")
    points = list(range(lo, hi, step))
    return tuple([*points, hi])


def snap(side: str, limit: int, grid: Sequence[int]) -> int | None:
    """Grid index of a limit: up for a seller, down for a buyer; None if beyond the grid."""
    if side == "sell":
        for k, p in enumerate(grid):
            if p >= limit:
                return k
        return None
    for k in range(len(grid) - 1, -1, -1):
        if grid[k] <= limit:
            return k
    return None


def grid_steps(wanted: Mapping[str, int], delegation_of: Mapping[str, Delegation | None],
               grid: Sequence[int], min_households: int) -> tuple[Steps, dict[str, int]]:
    """A representative's steps on the grid, merged to ``min_households``, and the held back.

    ``wanted`` is client -> net Wh (sell > 0, buy < 0). Returns (steps,
    held back: client -> Wh that cannot go into this clearing).
    """
    if min_households < 1:
        raise ValueError("min_households >= 1")
    raw: Steps = {}
    held: dict[str, int] = {}
    for client, net in wanted.items():
        d = delegation_of.get(client)
        if d is None or net == 0:
            continue
        side = "sell" if net > 0 else "buy"
        k = snap(side, max(d.min_sell_price, 1) if side == "sell" else d.max_buy_price, grid)
        if k is None:
            held[client] = abs(net)
            continue
        raw.setdefault((side, k), {})[client] = abs(net)
    steps: Steps = {}
    for side in ("sell", "buy"):
        # Sellers merge towards dearer steps, buyers towards cheaper ones.
        order = sorted((k for s, k in raw if s == side), reverse=side == "buy")
        groups: list[tuple[int, dict[str, int]]] = []
        pending: dict[str, int] = {}
        for k in order:
            pending.update(raw[(side, k)])
            if len(pending) >= min_households:
                groups.append((k, pending))
                pending = {}
        if pending:
            if groups:
                # The last, most extreme clients join the group before them at
                # their own (stricter for that group) price.
                _, last = groups.pop()
                groups.append((order[-1], last | pending))
            else:
                held.update(pending)
        for k, members in groups:
            steps[(side, k)] = members
    return steps, held


def curve(steps: Steps, points: int) -> list[int]:
    """``supply ‖ demand`` (2 * ``points`` values) of ``steps``."""
    supply = [0] * points
    demand = [0] * points
    for (side, k), members in steps.items():
        wh = sum(members.values())
        if side == "sell":
            for i in range(k, points):
                supply[i] += wh
        else:
            for i in range(k + 1):
                demand[i] += wh
    return supply + demand


def split(vector: Sequence[int], others: int, random_bytes: RandomBytes) -> tuple[list[int], list[list[int]]]:
    """Additive shares of ``vector`` mod 2^64: (our own share, one share per other participant)."""
    shares = []
    for _ in range(others):
        raw = random_bytes(8 * len(vector))
        shares.append([int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)])
    own = [(v - sum(s[i] for s in shares)) % MODULUS for i, v in enumerate(vector)]
    return own, shares


def add(vectors: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise sum mod 2^64 (all vectors of one length). Raises ValueError otherwise."""
    if not vectors or len({len(v) for v in vectors}) != 1:
        raise ValueError("vectors of different lengths")
    return [sum(col) % MODULUS for col in zip(*vectors, strict=True)]


def valid_curves(supply: Sequence[int], demand: Sequence[int]) -> bool:
    """Whether an aggregate is a real pair of curves: bounded, S rising, D falling."""
    if any(v > MAX_CURVE_WH for v in (*supply, *demand)):
        return False
    return all(a <= b for a, b in zip(supply, supply[1:], strict=False)) and all(
        a >= b for a, b in zip(demand, demand[1:], strict=False))


@dataclass(frozen=True)
class CurveClearing:
    """``price`` None: nothing crosses. ``supply_at``/``demand_at``: the aggregate at ``price``."""

    price: int | None
    volume_wh: int
    supply_at: int
    demand_at: int


def at_price(grid: Sequence[int], supply: Sequence[int], demand: Sequence[int], price: int) -> tuple[int, int]:
    """(S(price), D(price)): supply of steps at or below ``price``, demand at or above."""
    s = max((supply[k] for k, p in enumerate(grid) if p <= price), default=0)
    d = max((demand[k] for k, p in enumerate(grid) if p >= price), default=0)
    return s, d


def clear_curves(grid: Sequence[int], supply: Sequence[int], demand: Sequence[int]) -> CurveClearing:
    """Clear the aggregate curves: the largest volume, at the midpoint of its price interval."""
    volumes = [min(s, d) for s, d in zip(supply, demand, strict=True)]
    best = max(volumes, default=0)
    if best <= 0:
        return CurveClearing(None, 0, 0, 0)
    lo = min(k for k, v in enumerate(volumes) if v == best)
    hi = max(k for k, v in enumerate(volumes) if v == best)
    price = (grid[lo] + grid[hi]) // 2
    s, d = at_price(grid, supply, demand, price)
    # S(price) >= S(grid[lo]) >= best and D(price) >= D(grid[hi]) >= best: the
    # midpoint trades the largest volume too.
    assert min(s, d) == best
    return CurveClearing(price, best, s, d)


def side_total(cleared: CurveClearing, side: str) -> int:
    return cleared.supply_at if side == "sell" else cleared.demand_at


def fill_bounds(own: int, total: int, volume: int) -> tuple[int, int]:
    """The fill a participant with ``own`` Wh at the price may get: (floor, ceil) of its pro rata share."""
    if total <= 0 or own <= 0:
        return 0, 0
    lo, rest = divmod(own * volume, total)
    return lo, lo + (1 if rest else 0)


def fills(claims: Mapping[str, int], total: int, volume: int) -> dict[str, int]:
    """Each participant's fill on one side from the claims that arrived.

    ``total`` is the aggregate at the price (S* or D*). If the claims add up
    to it, the fills add up to ``volume`` exactly; claims that are missing
    (a participant gone) leave their part unfilled, and nobody gets more
    than the ceiling of its pro rata share. Raises ValueError if the claims
    exceed ``total`` (someone claimed more than it shared).
    """
    claimed = sum(claims.values())
    if claimed > total:
        raise ValueError(f"claims of {claimed} Wh exceed the aggregate {total} Wh")
    if claimed == 0:
        return {m: 0 for m in claims}
    filled = volume if claimed == total else volume * claimed // total
    return split_fill(dict(claims), filled)


def assign(sell: Mapping[str, int], buy: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """Pair sellers' and buyers' fills into trades (seller, buyer, Wh), by member id, never with itself."""
    left = dict(buy)
    out = []
    for s in sorted(sell):
        wh = sell[s]
        for b in sorted(left):
            if wh == 0:
                break
            if b == s or left[b] == 0:
                continue
            q = min(wh, left[b])
            out.append((s, b, q))
            wh -= q
            left[b] -= q
    return out


def shared_trade_id(result_id: bytes, index: int) -> bytes:
    """Deterministic trade id of pair ``index`` of a shared clearing."""
    return hashlib.blake2b(result_id + index.to_bytes(4, "big"), digest_size=16).digest()


def shared_terms(pairs: Sequence[tuple[str, str, int]], refs: Mapping[str, tuple[bytes, bytes]],
                 result_id: bytes, broker: str, slot_start: int, slot_len: int, price: int,
                 created_at: int) -> list[AgentTerms]:
    """The terms of each pair: representatives trade as principals, naming their fill refs."""
    return [AgentTerms(shared_trade_id(result_id, i), s, s, b, b, broker, refs[s][0], refs[b][1], slot_start,
                       slot_len, wh, price, created_at)
            for i, (s, b, wh) in enumerate(pairs)]


def in_the_money(steps: Steps, grid: Sequence[int], side: str, price: int) -> dict[str, int]:
    """Clients of ``steps`` whose step trades at ``price``: who shares a fill on ``side``."""
    out: dict[str, int] = {}
    for (s, k), members in steps.items():
        if s == side and (grid[k] <= price if side == "sell" else grid[k] >= price):
            out.update(members)
    return out


# --- a round, on the broker ------------------------------------------------------------------


@dataclass
class RoundSums:
    """The sums a broker collects in one round, and who goes on if it is incomplete."""

    participants: tuple[str, ...]
    width: int
    """Values per sum: 2 * grid points."""
    sums: dict[str, tuple[frozenset[str], list[int]]] = field(default_factory=dict)

    def add(self, member: str, senders: Sequence[str], values: Sequence[int]) -> bool:
        """Record ``member``'s sum; False (ignored) if it is not a participant, sent twice,
        names non-participants or has the wrong width."""
        if member not in self.participants or member in self.sums or len(values) != self.width:
            return False
        if member not in senders or not set(senders) <= set(self.participants):
            return False
        self.sums[member] = (frozenset(senders), list(values))
        return True

    @property
    def complete(self) -> bool:
        everyone = frozenset(self.participants)
        return len(self.sums) == len(self.participants) and all(s == everyone for s, _ in self.sums.values())

    def aggregate(self) -> tuple[list[int], list[int]]:
        """(supply, demand) of a complete round."""
        assert self.complete
        total = add([v for _, v in self.sums.values()])
        half = self.width // 2
        return total[:half], total[half:]

    def survivors(self) -> tuple[str, ...]:
        """Who takes part in the next round: those whose sums came, minus the fewest
        members needed so that every remaining pair exchanged shares.

        A pair (i, j) is broken when j's sum does not include i's share or
        the other way round; the member with the most broken pairs goes first
        (ties: the larger member id), until none is left. Bounded by the
        number of participants.
        """
        alive = sorted(self.sums)
        for _ in range(len(self.participants)):
            broken = {m: sum(1 for o in alive if o != m and (m not in self.sums[o][0] or o not in self.sums[m][0]))
                      for m in alive}
            worst = max(alive, key=lambda m: (broken[m], m), default=None)
            if worst is None or broken[worst] == 0:
                break
            alive.remove(worst)
        return tuple(alive)


# --- a round, on a representative ------------------------------------------------------------


@dataclass
class RoundShares:
    """A participant's side of one round: its own share, and the shares it receives."""

    me: str
    participants: tuple[str, ...]
    own: list[int]
    received: dict[str, list[int]] = field(default_factory=dict)

    def receive(self, sender: str, values: Sequence[int]) -> bool:
        """Keep ``sender``'s share; False if not a participant, ourselves, a repeat or the wrong width."""
        if sender == self.me or sender not in self.participants or sender in self.received:
            return False
        if len(values) != len(self.own):
            return False
        self.received[sender] = list(values)
        return True

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.participants) - 1

    def total(self) -> tuple[tuple[str, ...], list[int]]:
        """(senders, the sum of the shares held: our own and those received)."""
        senders = tuple(sorted([self.me, *self.received]))
        return senders, add([self.own, *self.received.values()])
