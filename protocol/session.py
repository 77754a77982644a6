"""The session state machine: handshake, transport, keepalive, rekey, close.

Bytes in (``receive_data``), events out (``next_event``); messages in
(``send``), bytes out (``data_to_send``). Time is always an argument: the
caller asks ``get_timer()`` for the next deadline and calls
``handle_timer(now)`` when it passes. No I/O, no clock reads.

Every received message comes out of ``next_event``, the session's own
(Ping, Pong, Rekey) included, so that a caller can police all of them before
they cost it anything. The session never answers a Ping by itself: the
caller answers the ones it admits with ``send(Pong(ping.seq))``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from protocol import framing
from protocol._states import HANDSHAKE_STATES, TRANSITIONS, State
from protocol.canonical import truncate_utf8
from protocol.credentials import Credential, TrustPolicy
from protocol.errors import (
    DecodeError,
    LocalProtocolError,
    PeerRefused,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.events import NEED_DATA, ConnectionClosed, Event, HandshakeComplete
from protocol.handshake import DH_LEN, NoiseHandshake, NoiseTransport
from protocol.messages import (
    Close,
    Hello,
    Message,
    Ping,
    Pong,
    Rekey,
    decode_message,
    encode_message,
)
from protocol.reasons import Reason
from protocol.refusal import Refusal
from protocol.schema import U32


@dataclass(frozen=True)
class Timeouts:
    """Deadlines and rekey thresholds (seconds / message counts)."""

    handshake_stage: float = 5.0
    ping_interval: float = 30.0
    idle_timeout: float = 90.0
    rekey_interval: float = 3600.0
    rekey_messages: int = 2**20


class Session:
    """One peer connection, from the first handshake byte to Close.

    ``initiator`` sessions queue handshake message 1 immediately. After
    ``next_event`` raises a :class:`ProtocolError` the session is CLOSED; the
    caller should still flush ``data_to_send()`` (it may hold a Close frame)
    and then close the stream.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        credential: Credential,
        policy: TrustPolicy,
        now: float,
        timeouts: Timeouts = Timeouts(),
        ephemeral_private: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self.credential = credential
        self.policy = policy
        self.timeouts = timeouts
        self.peer: Credential | None = None
        self.close_reason: Reason | None = None
        # True once the peer ended the session with a Close frame (not EOF).
        self.close_received = False
        # The responder's refusal notice, if it refused us (initiator only).
        self.refusal: Refusal | None = None
        self._hs = NoiseHandshake(
            initiator=initiator, static_private=static_private,
            community=policy.community, ephemeral_private=ephemeral_private,
        )
        self._transport: NoiseTransport | None = None
        self._decoder = framing.FrameDecoder(DH_LEN)
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._eof = False
        self._now = now
        self._stage_deadline = now + timeouts.handshake_stage
        self._last_rx = now
        self._ping_seq = 0
        self._ping_outstanding = False
        self._sent_since_rekey = 0
        self._last_rekey = now
        if initiator:
            self._state = State.AWAIT_MSG2
            self._decoder.max_frame = framing.HANDSHAKE_MAX_FRAME
            self._out += framing.frame(self._hs.write_message(b""))
        else:
            self._state = State.AWAIT_MSG1

    # --- state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is State.ESTABLISHED

    def _set_state(self, new: State) -> None:
        if new not in TRANSITIONS[self._state]:  # pragma: no cover - internal bug guard
            raise LocalProtocolError(f"illegal transition {self._state} -> {new}")
        self._state = new

    # --- input ---------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the stream; ``b""`` means the peer closed it."""
        self._now = now
        if self._state is State.CLOSED:
            return
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | object:
        """Return the next event, or ``NEED_DATA``.

        Raises :class:`RemoteProtocolError` for anything the peer got wrong;
        the session is then CLOSED and, if it was established, a Close frame
        with the reason is queued in ``data_to_send``.
        """
        while not self._events:
            if self._state is State.CLOSED:
                return NEED_DATA
            try:
                body = self._decoder.next_frame()
                if body is None:
                    if self._eof:
                        return self._on_eof()
                    return NEED_DATA
                self._last_rx = self._now
                self._on_frame(body)
            except ProtocolError as exc:
                self._fail(exc)
                raise
        return self._events.popleft()

    def _on_eof(self) -> Event:
        if self._state in HANDSHAKE_STATES:
            event = ConnectionClosed(Reason.HANDSHAKE_FAILED, "peer closed during handshake", True)
        else:
            event = ConnectionClosed(Reason.PROTOCOL_ERROR, "connection lost without Close", True)
        self._close_state(event.reason)
        return event

    def _fail(self, exc: ProtocolError) -> None:
        if self._state is State.ESTABLISHED and self._transport is not None:
            self._queue(Close(int(exc.reason), truncate_utf8(str(exc), 200)))
        self._close_state(exc.reason)

    def _close_state(self, reason: Reason) -> None:
        if self._state is not State.CLOSED:
            self._set_state(State.CLOSED)
            self.close_reason = reason

    def _on_frame(self, body: bytes) -> None:
        if self._state is State.AWAIT_MSG1:
            self._hs.read_message(body)
            # Message 1's payload is empty by spec; it is plaintext in XX, and
            # a non-empty one would already have been refused by the 32-byte cap.
            self._out += framing.frame(self._hs.write_message(self._hello()))
            self._decoder.max_frame = framing.HANDSHAKE_MAX_FRAME
            self._stage_deadline = self._now + self.timeouts.handshake_stage
            self._set_state(State.AWAIT_MSG3)
        elif self._state is State.AWAIT_MSG2:
            refusal = Refusal.parse(body)
            if refusal is not None:
                # The responder refused us before any handshake work (§13.7).
                self.refusal = refusal
                raise PeerRefused(
                    f"refused before the handshake: {refusal.reason.name}, "
                    f"retry after {refusal.retry_after:g} s", refusal.reason, refusal.retry_after)
            payload = self._hs.read_message(body)
            peer = self._accept_hello(payload)
            # Only send our credential once theirs checked out: a node that is
            # not a member learns nothing about who we are beyond our key.
            self._out += framing.frame(self._hs.write_message(self._hello()))
            self._established(peer)
        elif self._state is State.AWAIT_MSG3:
            payload = self._hs.read_message(body)
            self._transport = self._hs.transport()
            try:
                peer = self._accept_hello(payload)
            except ProtocolError:
                # The initiator proved possession of its static key, so it
                # may learn why it was refused (sent inside the session).
                self._set_state(State.ESTABLISHED)
                raise
            self._established(peer)
        else:
            self._on_transport_frame(body)

    def _hello(self) -> bytes:
        return encode_message(Hello(self.credential))

    def _accept_hello(self, payload: bytes) -> Credential:
        try:
            msg = decode_message(payload)
        except DecodeError as exc:
            raise RemoteProtocolError(f"bad handshake payload: {exc}", Reason.HANDSHAKE_FAILED) from exc
        if not isinstance(msg, Hello):
            raise RemoteProtocolError("handshake payload is not Hello", Reason.HANDSHAKE_FAILED)
        self.policy.check(msg.credential, self._now, noise_pk=self._hs.remote_static)
        return msg.credential

    def _established(self, peer: Credential) -> None:
        self.peer = peer
        if self._transport is None:
            self._transport = self._hs.transport()
        self._decoder.max_frame = framing.NOISE_MAX_FRAME
        self._last_rekey = self._now
        self._set_state(State.ESTABLISHED)
        self._events.append(HandshakeComplete(peer, self._hs.handshake_hash()))

    def _on_transport_frame(self, body: bytes) -> None:
        assert self._transport is not None
        msg = decode_message(self._transport.decrypt(body))
        # Invariant: every received message is surfaced, session-internal ones
        # included, so the caller can police them (docs/protocol.md §13.1).
        # A Ping is not answered here: the caller answers one it admits with
        # send(Pong(seq)). Pong and Rekey take effect at once (the next frame
        # may already be under the new key) and are surfaced afterwards.
        match msg:
            case Ping():
                self._events.append(msg)
            case Pong():
                self._ping_outstanding = False
                self._events.append(msg)
            case Rekey():
                self._transport.rekey_inbound()
                self._events.append(msg)
            case Close(reason=code, message=text):
                try:
                    reason = Reason(code)
                except ValueError:
                    reason = Reason.PROTOCOL_ERROR
                self._close_state(reason)
                self.close_received = True
                self._events.append(ConnectionClosed(reason, text, True))
            case Hello():
                raise RemoteProtocolError("Hello after handshake", Reason.UNEXPECTED_MESSAGE)
            case _:
                self._events.append(msg)

    # --- output --------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for the peer. Raises LocalProtocolError unless established."""
        if self._state is not State.ESTABLISHED:
            raise LocalProtocolError(f"cannot send in state {self._state.value}")
        if isinstance(msg, (Hello, Rekey, Close)):
            raise LocalProtocolError(f"{type(msg).__name__} is sent by the session itself")
        try:
            # Check our own message against its spec (no msgpack round trip).
            # Decode once: a record we decoded, or checked before (a gossip
            # item sent to several peers), is known valid and not walked again.
            msg.check_spec()
        except DecodeError as exc:
            raise LocalProtocolError(f"invalid {type(msg).__name__}: {exc}") from exc
        self._queue(msg)

    def _queue(self, msg: Message) -> None:
        assert self._transport is not None
        plaintext = encode_message(msg)
        if len(plaintext) > framing.NOISE_MAX_FRAME - 16:
            raise LocalProtocolError(f"message of {len(plaintext)} bytes is too large")
        self._out += framing.frame(self._transport.encrypt(plaintext))
        self._sent_since_rekey += 1
        # Close is the last frame: never follow it with a Rekey.
        if self._sent_since_rekey >= self.timeouts.rekey_messages and not isinstance(msg, Close):
            self._rekey()

    def _rekey(self) -> None:
        assert self._transport is not None
        self._out += framing.frame(self._transport.encrypt(encode_message(Rekey())))
        self._transport.rekey_outbound()
        self._sent_since_rekey = 0
        self._last_rekey = self._now

    def close(self, reason: Reason = Reason.NORMAL, message: str = "") -> None:
        """End the session; queues a Close frame if it was established."""
        if self._state is State.ESTABLISHED:
            self._queue(Close(int(reason), truncate_utf8(message, 200)))
        self._close_state(reason)

    @property
    def has_data_to_send(self) -> bool:
        """True if ``data_to_send()`` would return bytes."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Return and clear the bytes queued for the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- timers --------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must be called, or None."""
        if self._state is State.CLOSED:
            return None
        if self._state in HANDSHAKE_STATES:
            return self._stage_deadline
        t = self.timeouts
        return min(
            self._last_rx + (t.idle_timeout if self._ping_outstanding else t.ping_interval),
            self._last_rekey + t.rekey_interval,
        )

    def handle_timer(self, now: float) -> None:
        """Act on deadlines that passed by ``now``.

        Raises :class:`RemoteProtocolError` (TIMEOUT) when a handshake stage
        or the idle timeout expired; the session is then CLOSED.
        """
        self._now = now
        if self._state is State.CLOSED:
            return
        t = self.timeouts
        try:
            if self._state in HANDSHAKE_STATES:
                if now >= self._stage_deadline:
                    raise RemoteProtocolError(
                        f"handshake stage {self._state.value} timed out", Reason.TIMEOUT
                    )
                return
            if now >= self._last_rx + t.idle_timeout:
                raise RemoteProtocolError("peer idle for too long", Reason.TIMEOUT)
            if now >= self._last_rx + t.ping_interval and not self._ping_outstanding:
                self._ping_seq = (self._ping_seq + 1) & U32
                self._ping_outstanding = True
                self._queue(Ping(self._ping_seq))
            if now >= self._last_rekey + t.rekey_interval:
                self._rekey()
        except ProtocolError as exc:
            self._fail(exc)
            raise
