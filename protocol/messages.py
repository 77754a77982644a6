"""Application messages: typed, validated, msgpack-encoded.

Wire form of every message (docs/protocol.md, "Messages"): the plaintext of
one transport frame is the canonical msgpack array
``[version, type, field1, field2, ...]``. ``version`` is
:data:`PROTOCOL_VERSION`; ``type`` selects the class registered with
:func:`register`. Unknown types and versions are protocol errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from protocol import canonical
from protocol.credentials import Credential
from protocol.errors import DecodeError, LocalProtocolError
from protocol.events import Event
from protocol.reasons import Reason
from protocol.schema import U32, Int, Nested, Record, Str, f

PROTOCOL_VERSION = 1


class Message(Record, Event):
    """Base of all application messages; ``TYPE`` is the wire type code.

    ``CATEGORY`` groups messages for policing (token bucket per category):
    ``"control"`` (keepalive, feedback, session management), ``"gossip"``
    (orders, cancels, announcements) or ``"trade"`` (takes and receipts).

    Type code ranges: 1-15 session, 16-31 congestion and revocation,
    32-63 trading (S1), 64-95 representatives and broker (S2-S4),
    96-111 discovery.
    """

    TYPE: ClassVar[int]
    CATEGORY: ClassVar[str] = "control"
    _packed: bytes | None = None  # the encoded message, once encoded (encode_message)

    def policing_cost(self) -> int:
        """How many messages this one counts as for rate limits (batches: their items)."""
        return 1


MESSAGE_TYPES: dict[int, type[Message]] = {}

M = TypeVar("M", bound=type[Message])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` decodable under its ``TYPE`` code."""
    code = cls.TYPE
    if code in MESSAGE_TYPES and MESSAGE_TYPES[code] is not cls:
        raise LocalProtocolError(f"message type {code} registered twice")
    MESSAGE_TYPES[code] = cls
    return cls


def encode_message(msg: Message, wire: list[Any] | None = None) -> bytes:
    """Canonical bytes of ``msg``: ``pack([PROTOCOL_VERSION, TYPE, *fields])``.

    ``wire`` is ``msg.to_wire()`` when the caller already has it. The bytes
    are kept on ``msg``: a message sent to several peers (a gossip item) is
    packed once.
    """
    # Session.send checks the message against its schema first.
    if wire is None:
        cached = msg._packed
        if cached is not None:
            return cached
        wire = msg._wire()
    data = canonical.pack([PROTOCOL_VERSION, msg.TYPE, *wire], check=False)
    object.__setattr__(msg, "_packed", data)
    return data


class DecodedMemo:
    """Messages already decoded from the exact same bytes, shared while installed.

    For the simulator, which runs a whole community in one process: an
    order's gossip frame reaches every node, and the nodes at one distance
    from its owner get the same plaintext (same order, same hops), so each of
    them scanned, unpacked and checked identical bytes. Decoding is a pure
    function of the bytes and a message is immutable, so a node that finds
    the exact bytes here gets the object it would build. Only successes are
    kept: bytes that fail are decoded, and fail, every time. Frames over
    ``max_bytes`` (gossip batches, made for one session and rarely seen
    twice) are not kept. A daemon never installs one (like
    :class:`protocol.signing.VerifiedMemo`).
    """

    def __init__(self, max_entries: int = 1 << 14, max_bytes: int = 4096) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._decoded: dict[bytes, Message] = {}
        self.hits = 0
        self.misses = 0

    def decode(self, data: bytes) -> Message:
        """:func:`decode_message` of ``data``, from the memo when it holds these bytes."""
        if len(data) > self.max_bytes:
            return _decode(data)
        if type(data) is not bytes:
            data = bytes(data)
        hit = self._decoded.get(data)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        msg = _decode(data)
        if len(self._decoded) >= self.max_entries:
            del self._decoded[next(iter(self._decoded))]  # the oldest
        self._decoded[data] = msg
        return msg


_memo: DecodedMemo | None = None


def install_decoded_memo(memo: DecodedMemo | None) -> DecodedMemo | None:
    """Make :func:`decode_message` use ``memo`` (None: decode everything); returns the previous one."""
    global _memo
    previous, _memo = _memo, memo
    return previous


def decode_message(data: bytes) -> Message:
    """Decode one message. Raises :class:`DecodeError` (reason set) on bad input."""
    memo = _memo
    if memo is not None:
        return memo.decode(data)
    return _decode(data)


def _decode(data: bytes) -> Message:
    try:
        value = canonical.unpack(data)
    except DecodeError as exc:
        exc.reason = Reason.INVALID_MESSAGE
        raise
    if len(value) < 2:
        raise DecodeError("message needs version and type", Reason.INVALID_MESSAGE)
    version, code = value[0], value[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {canonical.describe(version)}", Reason.UNSUPPORTED_VERSION)
    cls = MESSAGE_TYPES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
    if cls is None:
        raise DecodeError(f"unknown message type {canonical.describe(code)}", Reason.INVALID_MESSAGE)
    try:
        return cls.from_wire(value[2:])
    except DecodeError as exc:
        exc.reason = Reason.INVALID_MESSAGE
        raise


# --- session-layer messages -------------------------------------------------


@register
@dataclass(frozen=True)
class Hello(Message):
    """Handshake payload of messages 2 and 3: the sender's credential."""

    TYPE: ClassVar[int] = 1
    credential: Credential = f(Nested(Credential))


@register
@dataclass(frozen=True)
class Ping(Message):
    """Keepalive; the receiving session answers with Pong(seq) by itself."""

    TYPE: ClassVar[int] = 2
    seq: int = f(Int(0, U32))


@register
@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[int] = 3
    seq: int = f(Int(0, U32))


@register
@dataclass(frozen=True)
class Close(Message):
    """Last message of a session: a reason code and a short human message."""

    TYPE: ClassVar[int] = 4
    reason: int = f(Int(0, 255))
    message: str = f(Str(200))


@register
@dataclass(frozen=True)
class Rekey(Message):
    """The sender switches its sending key (Noise REKEY) right after this frame."""

    TYPE: ClassVar[int] = 5


SESSION_MESSAGES: tuple[type[Message], ...] = (Hello, Ping, Pong, Close, Rekey)


def message_fields(msg: Message) -> list[Any]:
    return msg.to_wire()
