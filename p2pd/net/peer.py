"""One peer connection: pumps bytes between a trio Stream and a Session.

The receive loop feeds the sans-IO :class:`protocol.Session`, hands events to
the node, and fires the session's timers. Sending goes through one lock with a
deadline, so a peer that stops reading cannot stall the tasks that send to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import log
from p2pd.clock import Clock, trio_deadline
from p2pd.errors import PeerGone
from protocol import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    Credential,
    Event,
    HandshakeComplete,
    Message,
    ProtocolError,
    Reason,
    Session,
)

RECEIVE_CHUNK = 65536


@dataclass
class ConnStats:
    started_at: float
    established_at: float | None = None
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(eq=False)
class PeerConnection:
    """A live connection; ``peer`` is set once the handshake completed."""

    stream: trio.abc.Stream
    session: Session
    address: str
    clock: Clock
    send_timeout: float = 10.0
    peer: Credential | None = None
    handshake_hash: bytes = b""
    stats: ConnStats = field(default_factory=lambda: ConnStats(0.0))
    established: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    # Set once the connection is either registered as the member's session
    # or over: what a dialler waits for.
    settled: trio.Event = field(default_factory=trio.Event)
    close_reason: Reason | None = None
    close_detail: str = ""
    # Inbound from a host where members were seen (p2pd.net.admission).
    known: bool = False
    # The node's counters (shared), so faults contained to this connection
    # show in ``p2pctl status``.
    counters: Counter[str] = field(default_factory=Counter)
    # The node's log sampler (shared): lines a peer can trigger at will.
    logs: log.Sampler = field(default_factory=log.Sampler)
    # Messages sent, by type (the node's, shared): for the metrics.
    sent: Counter[type[Message]] = field(default_factory=Counter)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def initiator(self) -> bool:
        return self.session.initiator

    @property
    def member_id(self) -> str:
        return self.peer.member_id if self.peer else "?"

    async def send(self, msg: Message) -> None:
        """Send ``msg``; raises PeerGone if the session is closed or the peer is too slow."""
        try:
            self.session.send(msg)
        except ProtocolError as exc:
            raise PeerGone(f"cannot send to {self.member_id}: {exc}") from exc
        self.stats.messages_out += 1
        self.sent[type(msg)] += 1
        await self.flush()

    async def flush(self, *, end_on_break: bool = True) -> None:
        """Write queued bytes. Raises PeerGone if the stream broke or stalled.

        The write is shielded from the caller's cancellation: stopping half
        way through a frame would corrupt the stream (the peer would fail to
        decrypt everything after it). Only the send deadline interrupts a
        write, and then the whole connection is closed; a broken stream ends
        it too unless ``end_on_break`` is False (then only PeerGone).
        """
        if not self.session.has_data_to_send:
            return  # the common case: no lock, no cancel scope
        async with self._send_lock:
            data = self.session.data_to_send()
            if not data:
                return  # another task flushed it while we waited for the lock
            self.stats.bytes_out += len(data)
            broke: BaseException | None = None
            # One scope both shields the write and bounds it.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + self.send_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    broke = exc
            if broke is not None:
                if end_on_break:
                    self._cancel.cancel()
                raise PeerGone(f"connection to {self.member_id} broke") from broke
            if scope.cancelled_caught:
                self.close_reason = Reason.TIMEOUT
                self._cancel.cancel()
                raise PeerGone(f"peer {self.member_id} is not reading; closed")

    async def close(self, reason: Reason = Reason.NORMAL, message: str = "") -> None:
        """Send Close (if established), then end the connection."""
        if self.close_reason is None:
            self.close_reason = reason
        self.session.close(reason, message)
        with trio.move_on_after(1.0):
            try:
                await self.flush()
            except PeerGone:
                pass
        self._cancel.cancel()


EventHandler = Callable[[PeerConnection, Event], Awaitable[None]]


async def pump_session(conn: PeerConnection, on_event: EventHandler) -> None:
    """Run ``conn`` until it closes; deliver every event to ``on_event``.

    Returns normally when the session ends for any reason; the reason is in
    ``conn.close_reason``. Never raises for the peer's misbehaviour.

    Two tasks share the session: the receive loop (no cancel scope per read:
    that cost dominated short sessions) and a timer task that sleeps until
    the session's next deadline. A session's deadlines only ever move later,
    so a sleeping timer task never misses one; waking early is harmless
    because ``handle_timer`` acts only on deadlines that have passed.
    """
    with conn._cancel:
        try:
            try:
                await conn.flush(end_on_break=False)
            except PeerGone:
                if not conn.initiator:
                    raise
                # A responder that refused us may have closed before our
                # message 1 went out: its refusal notice (docs/protocol.md
                # §13.7) can still be waiting to be read.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run_timers, conn)
                await _receive_loop(conn, on_event)
                nursery.cancel_scope.cancel()
        except PeerGone as exc:
            _gone(conn, str(exc))


async def _receive_loop(conn: PeerConnection, on_event: EventHandler) -> None:
    session = conn.session
    try:
        while True:
            data = await conn.stream.receive_some(RECEIVE_CHUNK)
            now = conn.clock.now()
            conn.stats.bytes_in += len(data)
            session.receive_data(bytes(data), now)
            while True:
                event = session.next_event()
                if event is NEED_DATA:
                    break
                assert isinstance(event, Event)
                if isinstance(event, ConnectionClosed):
                    conn.close_reason = event.reason
                    conn.logs.info(now, "peer_closed", f"{event.reason.name}:{conn.member_id}",
                                   peer=conn.member_id, addr=conn.address,
                                   reason=event.reason.name, message=event.message)
                    if session.close_received and conn.peer is not None:
                        # The policer sees the Close too (it has taken effect).
                        conn.stats.messages_in += 1
                        await on_event(conn, Close(int(event.reason), event.message))
                    return
                if isinstance(event, HandshakeComplete):
                    conn.peer = event.peer
                    conn.handshake_hash = event.handshake_hash
                    conn.stats.established_at = now
                else:
                    conn.stats.messages_in += 1
                await on_event(conn, event)
                if session.state.value == "closed":
                    return
            await conn.flush()
    except ProtocolError as exc:
        await _fail(conn, exc)
    except PeerGone as exc:
        _gone(conn, str(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        conn.close_reason = conn.close_reason or Reason.PROTOCOL_ERROR
        _gone(conn, "connection broke")
    except Exception as exc:  # containment: our fault on one peer's input
        await internal_error(conn, exc)


async def _run_timers(conn: PeerConnection) -> None:
    session = conn.session
    try:
        while True:
            wall = session.get_timer()
            if wall is None:
                return
            await trio.sleep_until(trio_deadline(conn.clock, wall))
            session.handle_timer(conn.clock.now())
            await conn.flush()
    except ProtocolError as exc:
        await _fail(conn, exc)
        conn._cancel.cancel()
    except PeerGone:
        conn._cancel.cancel()
    except Exception as exc:  # containment, as in the receive loop
        await internal_error(conn, exc)


def _gone(conn: PeerConnection, error: str) -> None:
    # Keyed on the member (authenticated, so finitely many), never the address.
    conn.logs.info(conn.clock.now(), "peer_gone", conn.member_id, peer=conn.member_id,
                   addr=conn.address, error=error)


async def internal_error(conn: PeerConnection, exc: Exception) -> None:
    """Contain a fault of ours triggered by ``conn``'s input to that connection.

    An unexpected exception while handling one peer (a bug in a handler, a
    decoder raising something it does not document) must not end the node:
    it is logged once with its traceback, counted (``internal_errors``, shown
    by ``p2pctl status``), and only this session is closed, with
    INTERNAL_ERROR. The daemon and every other session go on.
    """
    conn.counters["internal_errors"] += 1
    conn.logs.exception(conn.clock.now(), "internal_error", exc,
                        f"{type(exc).__name__}:{conn.member_id}",
                        peer=conn.member_id, addr=conn.address)
    await conn.close(Reason.INTERNAL_ERROR, "internal error")


async def contained(conn: PeerConnection, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``func(*args)``, a task started for ``conn``'s input, under :func:`internal_error`."""
    try:
        await func(*args)
    except Exception as exc:
        await internal_error(conn, exc)


async def _fail(conn: PeerConnection, exc: ProtocolError) -> None:
    """Log a session failure and send what the session queued (e.g. Close)."""
    conn.close_reason = exc.reason
    conn.close_detail = str(exc)
    if conn.peer is not None:  # before authentication the node logs handshake_failed
        conn.logs.warning(conn.clock.now(), "session_failed", f"{exc.reason.name}:{conn.member_id}",
                          peer=conn.member_id, addr=conn.address, reason=exc.reason.name,
                          error=conn.close_detail)
    with trio.move_on_after(1.0):
        try:
            await conn.flush()
        except PeerGone:
            pass
