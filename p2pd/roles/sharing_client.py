"""A representative's side of shared clearing (S3); the broker's is p2pd/roles/sharing.py.

:meth:`SharedClient.join` takes a snapshot of what the clients want traded
in a slot and joins the broker's shared clearing. For each round the broker
opens, the client places the snapshot on the round's grid
(:func:`~p2pd.market.sharing.grid_steps`: steps of fewer than
``min_households`` clients merged, a side with fewer held back), splits the
curve into shares, sends one to every other participant over its session
and, once it holds everyone's (or after ``share_wait`` seconds, so that the
broker learns who is missing), sends the sum of what it holds to the
broker. It accepts a round only from the broker it joined, only with itself
among at least two participants, only rounds that count up and whose
participants shrink (a restart drops members, never adds any).

On the signed result it re-clears the aggregate (the price and volume must
be what :func:`~p2pd.market.sharing.clear_curves` gives), computes its own
point at the price, and registers what it may be filled with at most (the
ceiling of its pro rata share) as an order of its own in the
:class:`~p2pd.roles.broker.BrokerClient`, which then countersigns the
broker's proposals only within it. ``allocs`` (shared with the
representative's runner) gets the clients in the money per fill ref, which
is how each fill is split among them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from p2pd import log
from p2pd.errors import NotConnected, PeerGone
from p2pd.market.sharing import (
    RoundShares,
    Steps,
    at_price,
    clear_curves,
    curve,
    fill_bounds,
    grid_steps,
    in_the_money,
    split,
    valid_curves,
)
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import BrokerClient
from protocol import (
    MAX_ROUNDS,
    PARTICIPANTS_MAX,
    Delegation,
    FillClaim,
    Share,
    SharedClearing,
    ShareJoin,
    ShareResult,
    ShareRound,
    ShareSum,
    SignatureError,
    pack_vector,
    unpack_vector,
)

KEEP_SLOTS = 16
"""Slots whose clearing state is kept (the newest): enough to finish any open round."""


@dataclass
class _Slot:
    broker: str
    wanted: dict[str, int]
    delegations: dict[str, Delegation | None]
    round: int = 0
    participants: tuple[str, ...] = ()
    grid: tuple[int, ...] = ()
    steps: Steps = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    shares: RoundShares | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    early: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    summed: bool = False
    result: SharedClearing | None = None
    bounds: dict[str, tuple[int, int]] = field(default_factory=dict)  # side -> (floor, ceil)
    refs: dict[str, bytes] = field(default_factory=dict)  # side -> order ref
    left: bool = False
    noted: bool = False


class SharedClient:
    """Shared clearing for a representative; ``client`` countersigns the resulting matches."""

    def __init__(self, client: BrokerClient, *, allocs: dict[bytes, dict[str, int]] | None = None,
                 min_households: int = 2, share_wait: float = 5.0,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.client = client
        self.node = client.node
        self.allocs = allocs if allocs is not None else {}
        self.min_households = min_households
        self.share_wait = share_wait
        self.random_bytes = random_bytes
        self.slots: dict[int, _Slot] = {}
        self.counters: Counter[str] = Counter()
        self.node.handle(ShareRound, self._on_round)
        self.node.handle(Share, self._on_share)
        self.node.handle(ShareResult, self._on_result)

    @property
    def me(self) -> str:
        return self.node.member_id

    async def join(self, broker: str, slot_start: int, slot_len: int, wanted: Mapping[str, int],
                   delegation_of: Mapping[str, Delegation | None]) -> bool:
        """Join ``broker``'s shared clearing of a slot with a snapshot of the clients' wishes
        (client -> net Wh, sell > 0); False if there is nothing to trade or no session."""
        wanted = {c: w for c, w in wanted.items() if w}
        if not wanted or slot_start in self.slots:
            return False
        for earlier in self.slots.values():
            # We sent a sum and never saw a result: the round failed, or the
            # broker left us out after our sum arrived (docs/protocol.md 15).
            if earlier.summed and earlier.result is None and not earlier.noted:
                earlier.noted = True
                self.counters["no_result_after_sum"] += 1
        try:
            await self.node.send_to(broker, ShareJoin(slot_start, slot_len))
        except (PeerGone, NotConnected):
            self.counters["joins_failed"] += 1
            return False
        self.slots[slot_start] = _Slot(broker, dict(wanted), {c: delegation_of.get(c) for c in wanted})
        for old in sorted(self.slots)[:-KEEP_SLOTS]:
            del self.slots[old]
        self.counters["joins"] += 1
        return True

    def leave(self, slot_start: int) -> None:
        """Take no further part in a slot's clearing (it is traded another way now)."""
        s = self.slots.get(slot_start)
        if s is not None and s.result is None:
            s.left = True

    # --- rounds ---------------------------------------------------------------------------

    def _accepts(self, s: _Slot, conn: PeerConnection, msg: ShareRound) -> bool:
        assert conn.peer is not None
        if conn.peer.member_id != s.broker or conn.peer.role != "broker" or s.left:
            return False
        if msg.round <= s.round or self.me not in msg.participants:
            return False
        if s.round and not (set(msg.participants) < set(s.participants) and msg.grid == s.grid):
            return False  # a restart only drops members, on the same grid
        return True

    async def _on_round(self, conn: PeerConnection, msg: ShareRound) -> None:
        s = self.slots.get(msg.slot_start)
        if s is None or not self._accepts(s, conn, msg):
            self.counters["rounds_refused"] += 1
            return
        if not s.grid:
            s.grid = msg.grid
            s.steps, s.held = grid_steps(s.wanted, s.delegations, s.grid, self.min_households)
            self.counters["held_back_wh"] += sum(s.held.values())
        s.round, s.participants, s.summed, s.ready = msg.round, msg.participants, False, trio.Event()
        others = [m for m in msg.participants if m != self.me]
        own, theirs = split(curve(s.steps, len(s.grid)), len(others), self.random_bytes)
        s.shares = RoundShares(self.me, msg.participants, own)
        for (rnd, sender), values in list(s.early.items()):
            if rnd == msg.round:
                s.shares.receive(sender, values)
        s.early = {k: v for k, v in s.early.items() if k[0] > msg.round}
        if s.shares.complete:
            s.ready.set()
        self.counters["rounds"] += 1
        # Sending and waiting for the others happen off this session's receive loop.
        self.node.spawn_for(conn, self._share_and_sum, msg.slot_start, msg.round,
                            list(zip(others, theirs, strict=True)))

    async def _share_and_sum(self, slot_start: int, rnd: int, shares: list[tuple[str, list[int]]]) -> None:
        for member, values in shares:
            try:
                await self.node.send_to(member, Share(slot_start, rnd, pack_vector(values)))
            except (PeerGone, NotConnected):
                self.counters["shares_unsent"] += 1
        s = self.slots[slot_start]
        with trio.move_on_after(self.share_wait):
            await s.ready.wait()
        if s.round != rnd or s.shares is None or s.summed:
            return
        s.summed = True
        senders, total = s.shares.total()
        if not s.shares.complete:
            self.counters["sums_partial"] += 1
        try:
            await self.node.send_to(s.broker, ShareSum(slot_start, rnd, senders, pack_vector(total)))
            self.counters["sums_sent"] += 1
        except (PeerGone, NotConnected):
            self.counters["sums_unsent"] += 1

    async def _on_share(self, conn: PeerConnection, msg: Share) -> None:
        assert conn.peer is not None
        s = self.slots.get(msg.slot_start)
        sender = conn.peer.member_id
        try:
            values = unpack_vector(msg.share)
        except ValueError:  # pragma: no cover - the decoder allows multiples of 16 bytes only
            return
        if s is None or msg.round < s.round or (msg.round == s.round and s.shares is None):
            self.counters["shares_unexpected"] += 1
            return
        if msg.round > s.round:
            # Its round reached the sender first; keep it for ours (bounded: rounds x members).
            if len(s.early) < MAX_ROUNDS * PARTICIPANTS_MAX:
                s.early.setdefault((msg.round, sender), values)
            return
        assert s.shares is not None
        if not s.shares.receive(sender, values):
            self.counters["shares_rejected"] += 1
            return
        if s.shares.complete:
            s.ready.set()

    # --- the result -----------------------------------------------------------------------

    def check_result(self, conn: PeerConnection, r: SharedClearing) -> _Slot | None:
        """The slot whose round ``r`` completes, or None if we do not take it (counted)."""
        assert conn.peer is not None
        s = self.slots.get(r.slot_start)
        why = ""
        if s is None or s.left or conn.peer.member_id != s.broker or r.broker != s.broker:
            why = "not our broker's"
        elif (r.round, r.participants, r.grid) != (s.round, s.participants, s.grid) or s.result is not None:
            why = "not our round"
        else:
            try:
                r.verify(conn.peer.sign_pk)
            except SignatureError:
                why = "bad signature"
        if not why and s is not None:
            supply, demand = unpack_vector(r.supply), unpack_vector(r.demand)
            cleared = clear_curves(r.grid, supply, demand) if valid_curves(supply, demand) else None
            if cleared is None or (cleared.price or 0, cleared.volume_wh) != (r.price, r.volume_wh):
                why = "the price or volume is not the aggregate's"
        if why:
            self.counters["results_refused"] += 1
            log.warning("shared_result_refused", slot=r.slot_start, why=why)
            return None
        return s

    async def _on_result(self, conn: PeerConnection, msg: ShareResult) -> None:
        r = msg.result
        s = self.check_result(conn, r)
        if s is None:
            return
        s.result = r
        self.counters["results"] += 1
        if not r.price:
            return
        supply, demand = unpack_vector(r.supply), unpack_vector(r.demand)
        total = at_price(r.grid, supply, demand, r.price)
        n = len(s.grid)
        own_curve = curve(s.steps, n)
        mine = at_price(s.grid, own_curve[:n], own_curve[n:], r.price)
        for side, own, agg in (("sell", mine[0], total[0]), ("buy", mine[1], total[1])):
            s.refs[side] = self.random_bytes(16)
            s.bounds[side] = fill_bounds(own, agg, r.volume_wh)
            most = s.bounds[side][1]
            if most > 0:
                self.client.expect(self.client.make_order(side, r.slot_start, r.slot_len, most, r.price,
                                                          order_id=s.refs[side]))
                self.allocs[s.refs[side]] = in_the_money(s.steps, s.grid, side, r.price)
        claim = FillClaim(r.slot_start, r.round, s.refs["sell"], mine[0], s.refs["buy"], mine[1])
        try:
            await conn.send(claim)
            self.counters["claims_sent"] += 1
        except PeerGone:
            self.counters["claims_unsent"] += 1

    def filled(self, slot_start: int) -> dict[str, tuple[int, int, int]]:
        """Per side: (Wh received in receipts, floor, ceiling of our pro rata share)."""
        s = self.slots.get(slot_start)
        if s is None or s.result is None:
            return {}
        got = {side: 0 for side in s.refs}
        for r in self.client.receipts.values():
            t = r.terms
            for side, ref in s.refs.items():
                if (t.seller_order if side == "sell" else t.buyer_order) == ref:
                    got[side] += t.wh
        return {side: (got[side], *s.bounds[side]) for side in s.refs}
