"""Shared clearing (S3): the broker adds shares, representatives keep their curves.

:class:`SharedBroker` runs on the broker next to its
:class:`~p2pd.roles.broker.Broker`: representatives join a slot
(``ShareJoin``) before its gate; at the gate :meth:`SharedBroker.clear` opens
a round (``ShareRound``), collects each participant's sum of shares
(``ShareSum``), restarts without those who dropped out (at most
``MAX_ROUNDS`` rounds), clears the aggregate curves, sends the signed result
(``ShareResult``), collects each participant's point at the price
(``FillClaim``) and proposes the trades like any match
(:meth:`~p2pd.roles.broker.Broker.propose_all`).

:class:`SharedClient` is a representative's side, next to its
:class:`~p2pd.roles.broker.BrokerClient`: it places its clients' wishes on
the grid (merging steps of fewer than ``min_households``), splits the curve
into shares (``Share`` to each other participant, over their session), sends
its sum, checks the result and claims its fill; the proposals are then
countersigned by the BrokerClient against the fill's bounds, so the broker
cannot give it more than its curve holds at the price. The rules are in
p2pd/market/sharing.py; the wire in docs/protocol.md section 15.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import trio

from p2pd import log
from p2pd.errors import NotConnected, PeerGone
from p2pd.market.sharing import (
    CurveClearing,
    RoundSums,
    assign,
    clear_curves,
    fills,
    shared_terms,
    valid_curves,
)
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import Broker
from protocol import (
    MAX_ROUNDS,
    ClearingAnnounce,
    ClearingSummary,
    Credential,
    FillClaim,
    SharedClearing,
    ShareJoin,
    ShareResult,
    ShareRound,
    ShareSum,
    digest,
    pack,
    pack_vector,
    unpack_vector,
)

KEEP_SLOTS = 16
"""Slots before the one being cleared whose state is kept (late sums and claims are dropped)."""

# --- the broker ------------------------------------------------------------------------------


@dataclass
class _Joined:
    members: dict[str, Credential] = field(default_factory=dict)
    round: int = 0
    sums: RoundSums | None = None
    complete: trio.Event = field(default_factory=trio.Event)
    result: SharedClearing | None = None
    claims: dict[str, FillClaim] = field(default_factory=dict)
    claimed: trio.Event = field(default_factory=trio.Event)
    closed: bool = False


class SharedBroker:
    """The broker's side of shared clearing; ``grid`` is the community's price grid."""

    def __init__(self, broker: Broker, grid: tuple[int, ...], *, share_timeout: float = 10.0,
                 claim_timeout: float = 5.0) -> None:
        self.broker = broker
        self.node = broker.node
        self.grid = grid
        self.share_timeout = share_timeout
        self.claim_timeout = claim_timeout
        self.slots: dict[int, _Joined] = {}
        self.counters: Counter[str] = Counter()
        self.node.handle(ShareJoin, self._on_join)
        self.node.handle(ShareSum, self._on_sum)
        self.node.handle(FillClaim, self._on_claim)

    def has(self, slot_start: int) -> bool:
        """Whether representatives joined the slot's shared clearing (it is not cleared yet)."""
        s = self.slots.get(slot_start)
        return s is not None and bool(s.members) and not s.closed

    async def _on_join(self, conn: PeerConnection, msg: ShareJoin) -> None:
        assert conn.peer is not None
        b = self.broker
        s = self.slots.get(msg.slot_start)
        if conn.peer.role != "representative":
            self.counters["joins_refused:BAD_ROLE"] += 1
        elif msg.slot_len != b.slot_len or msg.slot_start % b.slot_len:
            self.counters["joins_refused:OUT_OF_BOUNDS"] += 1
        elif (s is not None and s.closed) or b.now() >= msg.slot_start - b.gate_closure:
            self.counters["joins_refused:EXPIRED"] += 1
        else:
            s = self.slots.setdefault(msg.slot_start, _Joined())
            s.members[conn.peer.member_id] = conn.peer
            b.credentials[conn.peer.member_id] = conn.peer
            self.counters["joins"] += 1

    async def _on_sum(self, conn: PeerConnection, msg: ShareSum) -> None:
        assert conn.peer is not None
        s = self.slots.get(msg.slot_start)
        if s is None or s.sums is None or msg.round != s.round:
            self.counters["sums_unexpected"] += 1
            return
        try:
            values = unpack_vector(msg.sums)
        except ValueError:
            values = []
        if not s.sums.add(conn.peer.member_id, msg.senders, values):
            self.counters["sums_rejected"] += 1
            return
        self.counters["sums"] += 1
        if s.sums.complete or len(s.sums.sums) == len(s.sums.participants):
            s.complete.set()

    async def _on_claim(self, conn: PeerConnection, msg: FillClaim) -> None:
        assert conn.peer is not None
        s = self.slots.get(msg.slot_start)
        me = conn.peer.member_id
        if s is None or s.result is None or msg.round != s.round or me not in s.result.participants \
                or me in s.claims:
            self.counters["claims_unexpected"] += 1
            return
        s.claims[me] = msg
        if len(s.claims) == len(s.result.participants):
            s.claimed.set()

    async def clear(self, slot_start: int) -> ClearingSummary | None:
        """Run the slot's shared clearing; the summary, or None if no round completed.

        Never raises for what participants do (counted and logged instead).
        """
        s = self.slots.setdefault(slot_start, _Joined())
        s.closed = True
        for old in [t for t in self.slots if t < slot_start - KEEP_SLOTS * self.broker.slot_len]:
            del self.slots[old]
        participants = tuple(sorted(s.members))
        width = 2 * len(self.grid)
        for rnd in range(1, MAX_ROUNDS + 1):
            if len(participants) < 2:
                self.counters["slots_too_few"] += 1
                return None
            s.round, s.sums, s.complete = rnd, RoundSums(participants, width), trio.Event()
            msg = ShareRound(slot_start, rnd, self.grid, participants)
            for m in participants:
                with contextlib.suppress(PeerGone, NotConnected):
                    await self.node.send_to(m, msg)
            with trio.move_on_after(self.share_timeout):
                await s.complete.wait()
            if s.sums.complete:
                break
            self.counters["rounds_restarted"] += 1
            participants = s.sums.survivors()
            log.info("shared_round_restart", slot=slot_start, round=rnd, go_on=len(participants))
        else:
            self.counters["slots_failed"] += 1
            return None
        assert s.sums is not None
        supply, demand = s.sums.aggregate()
        if not valid_curves(supply, demand):
            self.counters["slots_invalid"] += 1
            log.warning("shared_clearing_invalid", slot=slot_start, round=s.round)
            return None
        cleared = clear_curves(self.grid, supply, demand)
        b = self.broker
        key = self.node.identity.keys.signing
        result = SharedClearing.create(
            key, broker=b.me, slot_start=slot_start, slot_len=b.slot_len, round=s.round,
            participants=participants, grid=self.grid, supply=pack_vector(supply), demand=pack_vector(demand),
            price=cleared.price or 0, volume_wh=cleared.volume_wh)
        s.result = result
        for m in participants:
            with contextlib.suppress(PeerGone, NotConnected):
                await self.node.send_to(m, ShareResult(result))
        pairs: list[tuple[str, str, int]] = []
        if cleared.price is not None:
            with trio.move_on_after(self.claim_timeout):
                await s.claimed.wait()
            pairs = self._pairs(s, cleared)
            refs = {m: (c.sell_ref, c.buy_ref) for m, c in s.claims.items()}
            terms = shared_terms(pairs, refs, result.result_id, b.me, slot_start, b.slot_len, cleared.price,
                                 b.now())
            await b.propose_all(slot_start, terms, result.result_id)
        summary = ClearingSummary.create(
            key, broker=b.me, slot_start=slot_start, slot_len=b.slot_len, orders=len(participants),
            book_hash=result.result_id, result_hash=digest(pack([[x, y, wh] for x, y, wh in pairs])),
            price=cleared.price or 0, volume_wh=sum(wh for _, _, wh in pairs))
        slot = b.slot(slot_start)
        if slot.summary is None:  # an open book of the same slot keeps its own summary
            slot.summary = summary
        slot.closed = True
        await self.node.broadcast(ClearingAnnounce(summary))
        self.counters["slots_cleared"] += 1
        return summary

    def _pairs(self, s: _Joined, cleared: CurveClearing) -> list[tuple[str, str, int]]:
        missing = len(s.result.participants) - len(s.claims) if s.result else 0
        if missing:
            self.counters["claims_missing"] += missing
        try:
            sell = fills({m: c.supply_wh for m, c in s.claims.items()}, cleared.supply_at, cleared.volume_wh)
            buy = fills({m: c.demand_wh for m, c in s.claims.items()}, cleared.demand_at, cleared.volume_wh)
        except ValueError as exc:  # claims beyond what was shared: nobody trades on them
            self.counters["claims_inconsistent"] += 1
            log.warning("shared_claims_inconsistent", slot=s.result.slot_start if s.result else 0, why=str(exc))
            return []
        return assign(sell, buy)

