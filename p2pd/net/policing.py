"""Inbound policing, congestion feedback, bans, and the outbound pacer.

:class:`Policer` implements :class:`p2pd.net.node.InboundPolicy`. Wire it with
``policer = attach_policer(node, PolicingConfig(...))``: that sets
``node.inbound`` and registers its handlers for CongestionFeedback and
FeedbackEcho.

Inbound, per authenticated identity (member id, not connection, so a
reconnect does not refill anything):

1. A token bucket per message category (``type(msg).CATEGORY``). A message
   over the allowance is dropped and starts an *episode*: stamped
   :class:`CongestionFeedback` (at most one per ``feedback_interval``).
2. After ``grace`` (or as soon as the sender echoed the feedback, so it
   cannot claim the feedback was still in flight) every further excess
   message is a strike; ``max_excess`` strikes close the session with
   RATE_LIMITED and ban the member for ``ban_base * 2**(n-1)`` seconds
   (capped at ``ban_max``); banned members are refused with BANNED.
3. Messages within the allowance share the node's processing capacity
   (``node_capacity`` msg/s) round robin between identities
   (:class:`FairScheduler`). Each connection's pump handles one message at a
   time, so a waiting identity holds one slot and no identity gets more than
   its share while others wait. An identity that had to wait gets advisory
   feedback with its fair share.

Before authentication: new connections per source host are rate limited
(RATE_LIMITED); connections from hosts where no member was seen (strangers)
also share a node-wide handshake budget (``stranger_rate``, burst
``stranger_burst``): once it runs out the node is *under load* and refuses
further strangers with TOO_MANY_CONNECTIONS before any handshake work, while
members' known hosts (p2pd.net.admission) still get in. Totals and
handshakes are capped by ``NodeLimits``.

Outbound, :class:`OutboundPacer` keeps an :class:`protocol.AimdPacer` per
(peer, category): ``await policer.pace(conn, category)`` before sending.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log
from p2pd.errors import PeerGone
from p2pd.events import Banned, FeedbackSent, Unbanned
from p2pd.net.admission import host_of as host_of
from p2pd.net.peer import PeerConnection
from protocol import (
    AimdPacer,
    CongestionFeedback,
    FeedbackEcho,
    FeedbackStamper,
    Message,
    Reason,
    StampError,
    TokenBucket,
)

if TYPE_CHECKING:
    from p2pd.net.node import Node

# Seconds "under load" lasts after the strangers' budget last ran out.
UNDER_LOAD_HOLD = 10.0
# How long after its retry time a refused stranger still counts as coming back.
RETRY_WINDOW = 300.0


@dataclass(frozen=True)
class PolicingConfig:
    """Limits of the inbound policer and defaults of the outbound pacer.

    Rates are messages per second per identity; ``burst_seconds`` of a rate
    may arrive back to back. Durations are seconds.
    """

    control_rate: float = 10.0
    gossip_rate: float = 50.0
    trade_rate: float = 20.0
    burst_seconds: float = 2.0
    node_capacity: float = 2000.0
    feedback_hold: float = 10.0
    feedback_interval: float = 1.0
    grace: float = 1.0
    max_excess: int = 100
    ban_base: float = 60.0
    ban_max: float = 3600.0
    ban_memory: float = 86400.0
    conn_rate_per_host: float = 2.0
    conn_burst_per_host: float = 10.0
    stranger_rate: float = 20.0
    stranger_burst: float = 40.0
    max_tracked_hosts: int = 4096
    pacer_increase_fraction: float = 0.1

    def rate_for(self, category: str) -> float:
        return {"control": self.control_rate, "gossip": self.gossip_rate,
                "trade": self.trade_rate}.get(category, self.control_rate)


@dataclass
class _Episode:
    """Excess of one (member, category) since the first feedback."""

    started: float
    grace_end: float
    last_excess: float
    last_feedback: float
    strikes: int = 0
    drops: int = 0


@dataclass
class _Ban:
    until: float
    count: int
    last: float


@dataclass
class _Host:
    """A source host: its connection bucket, and when a load refusal told it to come back."""

    bucket: TokenBucket
    retry_at: float = 0.0


@dataclass
class _Member:
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    episodes: dict[str, _Episode] = field(default_factory=dict)
    last_load_feedback: dict[str, float] = field(default_factory=dict)
    accepted: int = 0
    dropped: int = 0
    last_seen: float = 0.0


class FairScheduler:
    """Node-wide processing capacity, handed out round robin per identity.

    Uses trio's clock; the dispatcher task runs in ``nursery`` only while
    someone waits.
    """

    def __init__(self, rate: float, burst: float, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._bucket = TokenBucket.full(rate, burst, trio.current_time())
        self._queues: dict[str, deque[trio.Event]] = {}
        self._ring: deque[str] = deque()
        self._running = False
        self.waits = 0

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, key: str) -> bool:
        """Wait for one unit of capacity; returns True if it had to wait.

        With capacity to spare it returns at once, without a checkpoint: the
        receive loop that calls it for every message yields on its stream
        already, and a scheduler round per message was a measurable share of
        a simulated community's time.
        """
        if not self._ring and self._bucket.take(trio.current_time()):
            return False
        self.waits += 1
        event = trio.Event()
        queue = self._queues.setdefault(key, deque())
        if not queue:
            self._ring.append(key)
        queue.append(event)
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._dispatch)
        try:
            await event.wait()
        except BaseException:
            if not event.is_set():
                self._remove(key, event)
            raise
        return True

    def _remove(self, key: str, event: trio.Event) -> None:
        queue = self._queues.get(key)
        if queue is None or event not in queue:
            return
        queue.remove(event)
        if not queue:
            del self._queues[key]
            self._ring.remove(key)

    async def _dispatch(self) -> None:
        try:
            while self._ring:
                delay = self._bucket.delay(trio.current_time())
                if delay > 0:
                    # Capacity refills with time. At least a microsecond: a
                    # delay below the float spacing of current_time() (hours
                    # into a virtual-time run) would not move the clock, and
                    # the refill rounds to just under one unit: a livelock.
                    await trio.sleep(max(delay, 1e-6))
                    continue
                self._bucket.take(trio.current_time())
                key = self._ring.popleft()
                queue = self._queues[key]
                queue.popleft().set()
                if queue:
                    self._ring.append(key)
                else:
                    del self._queues[key]
        finally:
            self._running = False


class OutboundPacer:
    """Our side of the feedback loop: one AIMD pacer per (member, category)."""

    def __init__(self, config: PolicingConfig) -> None:
        self.config = config
        self._pacers: dict[tuple[str, str], AimdPacer] = {}

    def pacer(self, member_id: str, category: str, now: float) -> AimdPacer:
        key = (member_id, category)
        pacer = self._pacers.get(key)
        if pacer is None:
            ceiling = self.config.rate_for(category)
            pacer = AimdPacer(ceiling=ceiling, now=now,
                              increase=ceiling * self.config.pacer_increase_fraction)
            self._pacers[key] = pacer
        return pacer

    def on_feedback(self, member_id: str, fb: CongestionFeedback, now: float) -> None:
        self.pacer(member_id, fb.category, now).on_feedback(fb.rate, fb.duration_ms / 1000, now)

    async def pace(self, conn: PeerConnection, category: str) -> None:
        """Wait until ``conn``'s peer may receive one more ``category`` message."""
        pacer = self.pacer(conn.member_id, category, conn.clock.now())
        for _ in range(10_000):
            delay = pacer.delay(conn.clock.now())
            if delay <= 0:
                pacer.sent(conn.clock.now())
                return
            await trio.sleep(delay)  # pacing: let time pass, not waiting for an event
        raise PeerGone(f"pacer for {conn.member_id} never allowed a message")  # pragma: no cover

    def rates(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (member, category), pacer in self._pacers.items():
            out.setdefault(member, {})[category] = round(pacer.rate, 3)
        return out


class Policer:
    """The node's :class:`~p2pd.net.node.InboundPolicy` with feedback and bans."""

    def __init__(self, node: Node, config: PolicingConfig | None = None, *,
                 secret: bytes | None = None) -> None:
        self.node = node
        self.config = config or PolicingConfig()
        self.stamper = FeedbackStamper(secret or secrets.token_bytes(32))
        self.scheduler = FairScheduler(self.config.node_capacity,
                                       self.config.node_capacity * 0.1, node.nursery)
        self.pacer = OutboundPacer(self.config)
        self.members: dict[str, _Member] = {}
        self.bans: dict[str, _Ban] = {}
        self._hosts: OrderedDict[str, _Host] = OrderedDict()
        self._strangers = TokenBucket.full(self.config.stranger_rate, self.config.stranger_burst,
                                           node.clock.now())
        self._returning = TokenBucket.full(self.config.stranger_rate, self.config.stranger_burst,
                                           node.clock.now())
        self.under_load_until = 0.0

    # --- InboundPolicy ---------------------------------------------------------

    def admit_connection(self, address: str, now: float, known: bool) -> Reason | None:
        host = host_of(address)
        cfg = self.config
        state = self._hosts.get(host)
        if state is None:
            state = _Host(TokenBucket.full(cfg.conn_rate_per_host, cfg.conn_burst_per_host, now))
            self._hosts[host] = state
            while len(self._hosts) > cfg.max_tracked_hosts:
                # Evict the least recently seen host: its bucket has refilled
                # the longest, so forgetting it gives away the least.
                self._hosts.popitem(last=False)
        self._hosts.move_to_end(host)
        if not state.bucket.take(now):
            self.node.counters["connection_rate_limited"] += 1
            return Reason.RATE_LIMITED
        if known:
            return None
        # Strangers' handshakes share a node-wide budget, however many
        # addresses they come from (docs/protocol.md §13.7, "Under load").
        # The retry step: a host we refused for load that waited as long as
        # its notice said before coming back spends a second budget of the
        # same size, which a flood that ignores the notices never reaches.
        returning = bool(state.retry_at) and state.retry_at <= now <= state.retry_at + RETRY_WINDOW
        budget = self._returning if returning else self._strangers
        budget.set_rate(cfg.stranger_rate, cfg.stranger_burst, now)
        if budget.take(now):
            state.retry_at = 0.0
            if returning:
                self.node.counters["stranger_retry_admitted"] += 1
            return None
        self.node.counters["stranger_budget_refused"] += 1
        self.under_load_until = now + UNDER_LOAD_HOLD
        state.retry_at = now + self.retry_after(Reason.TOO_MANY_CONNECTIONS)
        return Reason.TOO_MANY_CONNECTIONS

    def under_load(self, now: float) -> bool:
        """True while the strangers' handshake budget ran out in the last few seconds."""
        return now < self.under_load_until

    def retry_after(self, reason: Reason) -> float:
        if reason is Reason.RATE_LIMITED:
            return 1.0 / self.config.conn_rate_per_host  # one new token
        return 1.0

    def admit_session(self, conn: PeerConnection, now: float) -> Reason | None:
        ban = self.bans.get(conn.member_id)
        if ban is not None and now < ban.until:
            return Reason.BANNED
        return None

    async def admit_message(self, conn: PeerConnection, msg: Message, now: float) -> bool:
        member_id = conn.member_id
        state = self._member(member_id)
        state.last_seen = now
        category = type(msg).CATEGORY
        bucket = state.buckets.get(category)
        if bucket is None:
            rate = self.config.rate_for(category)
            bucket = state.buckets[category] = TokenBucket.full(
                rate, max(1.0, rate * self.config.burst_seconds), now)
        if not bucket.take(now, msg.policing_cost()):
            state.dropped += 1
            self.node.counters[f"policed:{category}"] += 1
            await self._on_excess(conn, state, category, now)
            return False
        waited = await self.scheduler.acquire(member_id)
        state.accepted += 1
        if waited:
            await self._load_feedback(conn, state, category, now)
        return True

    def forget(self, conn: PeerConnection) -> None:
        # Per-member state outlives connections on purpose: reconnecting
        # must not refill buckets or clear episodes. Prune idle members.
        now = self.node.clock.now()
        horizon = max(self.config.feedback_hold, self.config.burst_seconds) * 2
        for member_id in [m for m, s in self.members.items()
                          if now - s.last_seen > horizon and m not in self.node.sessions]:
            del self.members[member_id]
            self.stamper.forget(member_id)

    # --- control API -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Bans (with expiry), per-identity allowances and counts, pacer rates, counters."""
        now = self.node.clock.now()
        return {
            "bans": {m: {"until": b.until, "remaining_s": round(max(0.0, b.until - now), 3),
                         "count": b.count}
                     for m, b in self.bans.items() if b.until > now},
            "members": {
                m: {"accepted": s.accepted, "dropped": s.dropped,
                    "allowance": {c: b.rate for c, b in s.buckets.items()},
                    "episodes": {c: {"strikes": e.strikes, "drops": e.drops}
                                 for c, e in s.episodes.items()}}
                for m, s in self.members.items()
            },
            "pacer": self.pacer.rates(),
            "scheduler_waiting": self.scheduler.waiting,
            "under_load": self.under_load(now),
            "counters": {k: v for k, v in self.node.counters.items()
                         if k.startswith(("policed:", "ban", "feedback", "stamp",
                                          "connection_rate", "rate_limited", "messages_policed",
                                          "stranger_", "refused:", "handshakes_evicted"))},
        }

    def restore_ban(self, member_id: str, until: float, count: int, now: float) -> None:
        """Reinstate a ban kept in the store (after a restart); ``count`` keeps it growing."""
        if until > now:
            self.bans[member_id] = _Ban(until, max(1, count), now)

    def unban(self, member_id: str) -> bool:
        """Lift ``member_id``'s ban and forget its history; returns whether it was banned."""
        ban = self.bans.pop(member_id, None)
        self.members.pop(member_id, None)
        if ban is None:
            return False
        log.warning("unban", peer=member_id)
        self.node.events.publish(Unbanned(member_id))
        return True

    async def pace(self, conn: PeerConnection, category: str) -> None:
        """Wait until our pacer lets one ``category`` message go to ``conn``."""
        await self.pacer.pace(conn, category)

    async def send(self, conn: PeerConnection, msg: Message) -> None:
        """Pace, then send ``msg`` to ``conn``. Raises PeerGone."""
        await self.pace(conn, type(msg).CATEGORY)
        await conn.send(msg)

    # --- internals -------------------------------------------------------------

    def _member(self, member_id: str) -> _Member:
        state = self.members.get(member_id)
        if state is None:
            state = self.members[member_id] = _Member()
        return state

    async def _send(self, conn: PeerConnection, msg: Message) -> None:
        try:
            await conn.send(msg)
        except PeerGone:
            pass

    async def _feedback(self, conn: PeerConnection, category: str, rate: float, now: float,
                        why: str) -> None:
        fb = self.stamper.issue(conn.member_id, category, rate, now, self.config.feedback_hold)
        self.node.counters["feedback_sent"] += 1
        self.node.logs.info(now, "congestion_feedback", f"{conn.member_id}:{category}:{why}",
                            peer=conn.member_id, category=category, rate=fb.rate,
                            hold_s=self.config.feedback_hold, why=why, serial=fb.serial)
        self.node.events.publish(FeedbackSent(conn.member_id, category, fb.rate, fb.expires_ms / 1000, why))
        await self._send(conn, fb)

    async def _on_excess(self, conn: PeerConnection, state: _Member, category: str,
                         now: float) -> None:
        cfg = self.config
        ep = state.episodes.get(category)
        if ep is None or now - ep.last_excess > cfg.feedback_hold:
            ep = state.episodes[category] = _Episode(now, now + cfg.grace, now, now)
            ep.drops += 1
            await self._feedback(conn, category, cfg.rate_for(category), now, "over_allowance")
            return
        ep.drops += 1
        ep.last_excess = now
        if now >= ep.grace_end:
            ep.strikes += 1
        if ep.strikes >= cfg.max_excess:
            await self._ban(conn, category, now)
            return
        if now - ep.last_feedback >= cfg.feedback_interval:
            ep.last_feedback = now
            await self._feedback(conn, category, cfg.rate_for(category), now, "over_allowance")

    async def _load_feedback(self, conn: PeerConnection, state: _Member, category: str,
                             now: float) -> None:
        cfg = self.config
        last = state.last_load_feedback.get(category)
        if last is not None and now - last < cfg.feedback_interval:
            return
        state.last_load_feedback[category] = now
        active = sum(1 for s in self.members.values() if now - s.last_seen < 1.0) or 1
        share = min(cfg.rate_for(category), cfg.node_capacity / active)
        await self._feedback(conn, category, share, now, "node_loaded")

    async def on_feedback(self, conn: PeerConnection, fb: CongestionFeedback) -> None:
        """Handler for feedback from a peer: slow our pacer down, echo the stamp."""
        self.pacer.on_feedback(conn.member_id, fb, conn.clock.now())
        self.node.counters["feedback_received"] += 1
        await self._send(conn, FeedbackEcho.of(fb))

    async def on_echo(self, conn: PeerConnection, echo: FeedbackEcho) -> None:
        """Handler for a peer's echo of our feedback: check the stamp."""
        now = self.node.clock.now()
        state = self._member(conn.member_id)
        try:
            self.stamper.check_echo(conn.member_id, echo, now)
        except StampError as exc:
            self.node.counters[f"stamp_rejected:{exc.kind}"] += 1
            self.node.logs.warning(now, "stamp_rejected", f"{conn.member_id}:{exc.kind}",
                                   peer=conn.member_id, kind=exc.kind, serial=echo.serial)
            return
        self.node.counters["feedback_acked"] += 1
        ep = state.episodes.get(echo.category)
        if ep is not None:
            # The sender has the feedback now: excess from here on is a strike.
            ep.grace_end = min(ep.grace_end, now)

    async def _ban(self, conn: PeerConnection, category: str, now: float) -> None:
        cfg = self.config
        member_id = conn.member_id
        old = self.bans.get(member_id)
        count = 1 if old is None or now - old.last > cfg.ban_memory else old.count + 1
        duration = min(cfg.ban_max, cfg.ban_base * 2 ** (count - 1))
        self.bans[member_id] = _Ban(now + duration, count, now)
        state = self._member(member_id)
        state.episodes.clear()
        self.node.counters["rate_limited_closes"] += 1
        self.node.counters["bans"] += 1
        self.node.logs.warning(now, "ban", member_id, peer=member_id, category=category,
                               duration_s=duration, count=count, reason=Reason.RATE_LIMITED.name)
        self.node.events.publish(Banned(member_id, now + duration, duration, count, category))
        await conn.close(Reason.RATE_LIMITED, f"ignored congestion feedback ({category})")


def attach_policer(node: Node, config: PolicingConfig | None = None, *,
                   secret: bytes | None = None) -> Policer:
    """Create a :class:`Policer` for ``node`` and make it ``node.inbound``."""
    policer = Policer(node, config, secret=secret)
    node.inbound = policer
    node.handle(CongestionFeedback, policer.on_feedback)
    node.handle(FeedbackEcho, policer.on_echo)
    return policer
