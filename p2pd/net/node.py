"""The node: identity, live sessions, and message dispatch.

Invariant: ``sessions`` holds at most one established connection per member.
When two exist (a reconnect, or both sides dialling at once), both nodes keep
the same one (docs/protocol.md, "One session per member"): the connection
whose initiator has the smaller member id; if both were started by the same
side, the newer one. The other is closed with DUPLICATE_SESSION.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pd import log
from p2pd.clock import Clock, SystemClock
from p2pd.errors import NotConnected, PeerGone
from p2pd.events import EventBus, SessionClosed, SessionOpened
from p2pd.net.admission import KnownHosts, host_of
from p2pd.net.identity import NodeIdentity
from p2pd.net.peer import ConnStats, PeerConnection, contained, pump_session
from protocol import (
    Close,
    Event,
    HandshakeComplete,
    Message,
    Ping,
    Pong,
    Reason,
    Rekey,
    Session,
    Timeouts,
    TrustPolicy,
    refusal_frame,
)

MessageHandler = Callable[[PeerConnection, Any], Awaitable[None]]
# Received messages the session acted on itself before surfacing them.
_SESSION_ACTED = (Pong, Rekey, Close)


class InboundPolicy(Protocol):
    """Where rate limits and bans plug in (p2pd/net/policing.py implements it).

    ``admit_connection`` runs before any handshake work for a new inbound
    connection (``known`` if it comes from a host where members were seen)
    and returns a refusal reason or None; ``retry_after`` says
    how long a refused initiator should wait (it goes into the refusal
    notice, docs/protocol.md §13.7). ``admit_session`` runs
    once the peer is authenticated (bans apply here). ``admit_message`` runs
    for every application message before its handler and returns True to
    deliver it; it may send feedback or close ``conn`` itself.
    """

    def admit_connection(self, address: str, now: float, known: bool) -> Reason | None: ...

    def retry_after(self, reason: Reason) -> float: ...

    def admit_session(self, conn: PeerConnection, now: float) -> Reason | None: ...

    async def admit_message(self, conn: PeerConnection, msg: Message, now: float) -> bool: ...

    def forget(self, conn: PeerConnection) -> None: ...


class OpenPolicy:
    """Admits everything (used when no policing is configured)."""

    def admit_connection(self, address: str, now: float, known: bool) -> Reason | None:
        return None

    def retry_after(self, reason: Reason) -> float:
        return 1.0

    def admit_session(self, conn: PeerConnection, now: float) -> Reason | None:
        return None

    async def admit_message(self, conn: PeerConnection, msg: Message, now: float) -> bool:
        return True

    def forget(self, conn: PeerConnection) -> None:
        return None
SessionHook = Callable[[PeerConnection], Awaitable[None]]


@dataclass(frozen=True)
class NodeLimits:
    """Connection limits that apply before and after authentication."""

    max_connections: int = 128
    max_handshakes: int = 16
    send_timeout: float = 10.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    log_interval: float = 60.0
    """Seconds between two log lines of one cause that peers can trigger (p2pd.log.Sampler)."""
    max_known_hosts: int = 1024
    """Hosts where members were seen, remembered for admission priority (p2pd.net.admission)."""


class Node:
    """A community member's node. Create with :func:`open_node`."""

    def __init__(
        self,
        identity: NodeIdentity,
        policy: TrustPolicy,
        nursery: trio.Nursery,
        *,
        clock: Clock | None = None,
        limits: NodeLimits | None = None,
    ) -> None:
        self.identity = identity
        self.policy = policy
        self.clock = clock or SystemClock()
        self.limits = limits or NodeLimits()
        self.nursery = nursery
        self.sessions: dict[str, PeerConnection] = {}
        self.connections: set[PeerConnection] = set()
        # Sessions that carry no gossip (GossipControl NONE, docs/protocol.md
        # §12.3); maintained by p2pd.net.gossip, honoured by broadcast().
        self.gossip_off: set[PeerConnection] = set()
        self.handlers: dict[type[Message], MessageHandler] = {}
        self.on_open: list[SessionHook] = []
        self.on_close: list[SessionHook] = []
        self.events = EventBus()
        self.inbound: InboundPolicy = OpenPolicy()
        self.counters: Counter[str] = Counter()
        # Messages received (before policing) and sent, by type: /metrics shows them.
        self.received: Counter[type[Message]] = Counter()
        self.sent: Counter[type[Message]] = Counter()
        # Every line a stranger or a member can trigger at will goes through
        # this sampler (per cause: the first, then a summary per interval);
        # the counters above still count each occurrence.
        self.logs = log.Sampler(self.limits.log_interval)
        # Where members were seen: their connections get in first under load.
        self.known_hosts = KnownHosts(self.limits.max_known_hosts)
        self._notices: dict[tuple[Reason, int], bytes] = {}
        self.started_at = self.clock.now()

    @property
    def member_id(self) -> str:
        return self.identity.member_id

    @property
    def handshakes_in_progress(self) -> int:
        return sum(1 for c in self.connections if c.peer is None)

    def spawn_for(self, conn: PeerConnection, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``func(*args)`` on the node's nursery for work ``conn``'s input caused.

        A fault in it closes only ``conn`` (INTERNAL_ERROR), never the node.
        """
        self.nursery.start_soon(contained, conn, func, *args)

    def handle(self, msg_type: type[Message], handler: MessageHandler) -> None:
        """Route received messages of ``msg_type`` to ``handler(conn, msg)``.

        One handler per type: a second registration raises ``RuntimeError``
        (our bug: it would silently replace the first). Messages several
        roles wait for have one router (e.g. p2pd.roles.refusals).
        """
        if msg_type in self.handlers:
            raise RuntimeError(f"a handler for {msg_type.__name__} is registered already")
        self.handlers[msg_type] = handler

    # --- connections -------------------------------------------------------

    def note_known_host(self, host: str) -> None:
        """Give connections from ``host`` a member's priority (p2pd.net.admission)."""
        self.known_hosts.note(host, self.clock.now())

    def admit(self, address: str = "?") -> Reason | None:
        """Pre-authentication admission: None if a new connection may start.

        Connections from known hosts (where members were seen) come first:
        they skip the strangers' handshake budget, and a full node makes room
        for them by evicting a stranger's unfinished handshake.
        """
        known = host_of(address) in self.known_hosts
        refusal = self.inbound.admit_connection(address, self.clock.now(), known)
        if refusal is not None:
            return refusal
        if len(self.connections) >= self.limits.max_connections:
            if not (known and self._evict_handshake(strangers_only=True)):
                return Reason.TOO_MANY_CONNECTIONS
        if self.handshakes_in_progress >= self.limits.max_handshakes:
            # Evict the oldest unfinished handshake instead of refusing the
            # newcomer: a stranger who stalls handshakes must then open
            # connections faster than honest handshakes finish (a round trip)
            # to keep anyone out, instead of just holding all the slots. A
            # stranger never evicts a known host's handshake.
            if not self._evict_handshake(strangers_only=not known) and not known:
                return Reason.TOO_MANY_CONNECTIONS
        return None

    def _evict_handshake(self, *, strangers_only: bool) -> bool:
        """Close the oldest unfinished inbound handshake, a stranger's first."""
        pending = [c for c in self.connections if c.peer is None and not c.initiator]
        strangers = [c for c in pending if not c.known]
        candidates = strangers or ([] if strangers_only else pending)
        if not candidates:
            return False
        oldest = min(candidates, key=lambda c: c.stats.started_at)
        self.counters["handshakes_evicted"] += 1
        oldest.close_reason = Reason.TOO_MANY_CONNECTIONS
        self.connections.discard(oldest)  # counted out now; its task ends soon
        oldest._cancel.cancel()
        return True

    def new_connection(self, stream: trio.abc.Stream, *, initiator: bool, address: str) -> PeerConnection:
        now = self.clock.now()
        session = Session(
            initiator=initiator,
            static_private=self.identity.keys.noise_private,
            credential=self.identity.credential,
            policy=self.policy,
            now=now,
            timeouts=self.limits.timeouts,
        )
        conn = PeerConnection(stream, session, address, self.clock, self.limits.send_timeout,
                              stats=ConnStats(now), counters=self.counters, logs=self.logs,
                              sent=self.sent, known=host_of(address) in self.known_hosts)
        self.connections.add(conn)
        return conn

    async def serve_connection(self, conn: PeerConnection) -> None:
        """Run ``conn`` to its end, then unregister it and close the stream."""
        try:
            await pump_session(conn, self._on_event)
        finally:
            self.connections.discard(conn)
            self.inbound.forget(conn)
            was_current = conn.peer is not None and self.sessions.get(conn.peer.member_id) is conn
            if was_current:
                assert conn.peer is not None
                del self.sessions[conn.peer.member_id]
            reason = conn.close_reason or conn.session.close_reason or Reason.NORMAL
            if conn.peer is None:
                self.counters[f"handshake_failed:{reason.name}"] += 1
                self.logs.info(self.clock.now(), "handshake_failed", reason.name,
                               addr=conn.address, reason=reason.name,
                               error=conn.close_detail or None)
            conn.finished.set()
            conn.settled.set()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1.0):
                    await conn.stream.aclose()
                if was_current:
                    self.events.publish(SessionClosed(conn.member_id, reason.name))
                    for hook in self.on_close:
                        await hook(conn)

    async def _on_event(self, conn: PeerConnection, event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            await self._on_established(conn)
            return
        assert isinstance(event, Message)
        self.received[type(event)] += 1
        # Every received message is policed, the session's own included: the
        # session surfaces Ping, Pong, Rekey and Close instead of acting on
        # them unseen (docs/protocol.md §13.1).
        if not await self.inbound.admit_message(conn, event, self.clock.now()):
            self.counters["messages_policed"] += 1
            return
        if isinstance(event, Ping):
            # Answered only once admitted: a Ping flood is dropped, fed back
            # and banned like any other excess.
            try:
                await conn.send(Pong(event.seq))
            except PeerGone:
                pass
            return
        if isinstance(event, _SESSION_ACTED):
            return  # the session applied them already; admission only counts them
        handler = self.handlers.get(type(event))
        if handler is None:
            self.counters["unhandled_message"] += 1
            self.logs.debug(self.clock.now(), "unhandled_message", type(event).__name__,
                            peer=conn.member_id, type=type(event).__name__)
            return
        await handler(conn, event)

    def _initiator_id(self, conn: PeerConnection) -> str:
        return self.member_id if conn.initiator else conn.member_id

    async def _on_established(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        member = conn.peer.member_id
        if member == self.member_id:
            await conn.close(Reason.DUPLICATE_SESSION, "that is my own member id")
            return
        refusal = self.inbound.admit_session(conn, self.clock.now())
        if refusal is not None:
            self.counters[f"session_refused:{refusal.name}"] += 1
            self.logs.warning(self.clock.now(), "session_refused", f"{refusal.name}:{member}",
                              peer=member, reason=refusal.name)
            await conn.close(refusal, "refused by policy")
            return
        old = self.sessions.get(member)
        if old is not None:
            keep_new = (
                self._initiator_id(conn) < self._initiator_id(old)
                if self._initiator_id(conn) != self._initiator_id(old)
                else True
            )
            loser = old if keep_new else conn
            self.logs.info(self.clock.now(), "duplicate_session", member, peer=member,
                           kept="new" if keep_new else "old")
            if not keep_new:
                await conn.close(Reason.DUPLICATE_SESSION, "a session with this member exists")
                conn.settled.set()
                return
            del self.sessions[member]
            self.nursery.start_soon(loser.close, Reason.DUPLICATE_SESSION, "replaced by a newer session")
        self.sessions[member] = conn
        conn.established.set()
        conn.settled.set()
        self.counters["sessions_established"] += 1
        for host in _peer_hosts(conn):
            self.note_known_host(host)
        self.logs.info(self.clock.now(), "session_established", member, peer=member,
                       role=conn.peer.role, addr=conn.address, initiator=conn.initiator)
        self.events.publish(SessionOpened(member, conn.peer.role, conn.address))
        for hook in self.on_open:
            await hook(conn)

    def screen(self, address: str) -> Reason | None:
        """Admission of a new inbound connection, counted and (sampled) logged.

        Synchronous and cheap on purpose: the listener calls it right after
        accept(), before any task or handshake work exists for the stranger.
        """
        refusal = self.admit(address)
        if refusal is not None:
            key = f"refused:{refusal.name}"
            self.counters[key] += 1
            self.logs.warning(self.clock.now(), "connection_refused", refusal.name, addr=address,
                              reason=refusal.name, total=self.counters[key])
        return refusal

    def refusal_notice(self, reason: Reason) -> bytes:
        """The refusal notice frame for ``reason`` (docs/protocol.md §13.7), cached."""
        retry = self.inbound.retry_after(reason)
        key = (reason, round(retry * 1000))
        notice = self._notices.get(key)
        if notice is None:
            if len(self._notices) > 16:  # limits were reloaded many times
                self._notices.clear()
            notice = self._notices[key] = refusal_frame(reason, retry)
        return notice

    async def accept(self, stream: trio.abc.Stream, address: str) -> None:
        """Serve an inbound stream (in-memory tests; the listener screens itself)."""
        refusal = self.screen(address)
        if refusal is not None:
            with trio.move_on_after(1.0):
                try:
                    await stream.send_all(self.refusal_notice(refusal))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                await stream.aclose()
            return
        conn = self.new_connection(stream, initiator=False, address=address)
        await self.serve_connection(conn)

    async def connect_stream(self, stream: trio.abc.Stream, address: str) -> PeerConnection:
        """Start an outbound session over ``stream``; wait until it is established.

        Returns the member's session: this one, or an existing session with
        the same member that the one-session rule keeps instead. Raises :class:`PeerGone` if the handshake fails or the session is
        refused as a duplicate.
        """
        conn = self.new_connection(stream, initiator=True, address=address)
        self.nursery.start_soon(self.serve_connection, conn)
        await conn.settled.wait()
        if conn.peer is not None and conn.peer.member_id in self.sessions:
            # Either ours, or an existing session that won the tie-break.
            return self.sessions[conn.peer.member_id]
        reason = conn.close_reason or conn.session.close_reason or Reason.HANDSHAKE_FAILED
        refusal = conn.session.refusal
        if refusal is not None:
            raise PeerGone(f"session with {address} not established: {reason.name} (refused "
                           f"before the handshake; retry after {refusal.retry_after:g} s)",
                           reason=reason, retry_after=refusal.retry_after)
        raise PeerGone(f"session with {address} not established: {reason.name}", reason=reason)

    # --- sending -------------------------------------------------------------

    async def send_to(self, member_id: str, msg: Message) -> None:
        conn = self.sessions.get(member_id)
        if conn is None:
            raise NotConnected(f"no session with {member_id}")
        await conn.send(msg)

    async def broadcast(self, msg: Message, exclude: PeerConnection | None = None) -> int:
        """Send ``msg`` to every established session but ``exclude``; returns the count.

        Gossip-category messages skip the sessions in ``gossip_off``.
        """
        sent = 0
        skip = self.gossip_off if msg.CATEGORY == "gossip" else ()
        for conn in list(self.sessions.values()):
            if conn is exclude or conn in skip:
                continue
            try:
                await conn.send(msg)
                sent += 1
            except PeerGone:
                pass
        return sent

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "member_id": self.member_id,
            "role": self.identity.credential.role,
            "community": self.policy.community,
            "uptime_s": round(now - self.started_at, 3),
            "sessions": [
                {
                    "member_id": conn.member_id,
                    "role": conn.peer.role if conn.peer else None,
                    "address": conn.address,
                    "initiator": conn.initiator,
                    "since": conn.stats.established_at,
                    "messages_in": conn.stats.messages_in,
                    "messages_out": conn.stats.messages_out,
                }
                for conn in self.sessions.values()
            ],
            "handshakes_in_progress": self.handshakes_in_progress,
            "known_hosts": len(self.known_hosts),
            "counters": dict(self.counters),
            "log": self.logs.status(),
        }

    async def aclose(self) -> None:
        """Close every connection with SHUTDOWN, all at once.

        Each close waits at most 1 s for its Close to go out, so a stop takes
        about a second however many peers stall (one after the other it took
        a second per stalled peer, past systemd's stop timeout with ~30).
        """
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for conn in list(self.connections):
                    nursery.start_soon(conn.close, Reason.SHUTDOWN, "node shutting down")


def _peer_hosts(conn: PeerConnection) -> list[str]:
    """The hosts a session's peer was seen at: its address, and the socket's peer IP."""
    hosts = [host_of(conn.address)]
    if isinstance(conn.stream, trio.SocketStream):
        try:
            hosts.append(str(conn.stream.socket.getpeername()[0]))
        except OSError:
            pass
    return hosts


@asynccontextmanager
async def open_node(
    identity: NodeIdentity,
    policy: TrustPolicy,
    *,
    clock: Clock | None = None,
    limits: NodeLimits | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the ``async with`` block."""
    async with trio.open_nursery() as nursery:
        node = Node(identity, policy, nursery, clock=clock, limits=limits)
        try:
            yield node
        finally:
            await node.aclose()
            nursery.cancel_scope.cancel()
