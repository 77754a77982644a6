"""The refusal notice: a responder's "not now, and why" before any handshake work.

Before authentication nothing can be sent encrypted (docs/protocol.md §9), so
a responder that refuses a new connection by policy (per-host rate, its
connection or handshake limits, shutting down) says so in one plaintext
frame, in the place where handshake message 2 would be, then closes:

    frame body = "p2pd-refused" (12 ASCII bytes) || reason (u8) || retry_after_ms (u32 big-endian)

17 bytes, so a frame of ``00 11`` plus the body. A message 2 is at least
96 + 16 bytes long, so an initiator can never mistake one for the other; an
initiator that does not know the notice fails Noise processing on it and
closes (HANDSHAKE_FAILED), as it would on a silent close. Sans-IO: bytes in,
values out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import LocalProtocolError
from protocol.framing import frame
from protocol.reasons import Reason

REFUSAL_MAGIC = b"p2pd-refused"
_TAIL = struct.Struct(">BI")
REFUSAL_LEN = len(REFUSAL_MAGIC) + _TAIL.size
# The only reasons an unauthenticated notice may claim; others are reported
# as PROTOCOL_ERROR (a forged notice must not say REVOKED or BANNED).
REFUSAL_REASONS = frozenset({Reason.RATE_LIMITED, Reason.TOO_MANY_CONNECTIONS, Reason.SHUTDOWN})
MAX_RETRY_AFTER_MS = 3_600_000


@dataclass(frozen=True)
class Refusal:
    """A refusal notice: ``reason`` and the suggested wait in milliseconds."""

    reason: Reason
    retry_after_ms: int

    @property
    def retry_after(self) -> float:
        """The suggested wait in seconds."""
        return self.retry_after_ms / 1000

    def to_frame(self) -> bytes:
        """The whole frame (length prefix included). Raises LocalProtocolError
        for a reason a notice may not carry."""
        if self.reason not in REFUSAL_REASONS:
            raise LocalProtocolError(f"a refusal notice cannot say {self.reason.name}")
        ms = max(0, min(MAX_RETRY_AFTER_MS, self.retry_after_ms))
        return frame(REFUSAL_MAGIC + _TAIL.pack(int(self.reason), ms))

    @classmethod
    def parse(cls, body: bytes) -> Refusal | None:
        """The notice in frame ``body``, or None if ``body`` is not a notice.

        An unknown or disallowed reason becomes PROTOCOL_ERROR; a wait above
        one hour is capped at one hour.
        """
        if len(body) != REFUSAL_LEN or not body.startswith(REFUSAL_MAGIC):
            return None
        code, ms = _TAIL.unpack_from(body, len(REFUSAL_MAGIC))
        reason = Reason(code) if code in Reason._value2member_map_ else Reason.PROTOCOL_ERROR
        if reason not in REFUSAL_REASONS:
            reason = Reason.PROTOCOL_ERROR
        return cls(reason, min(ms, MAX_RETRY_AFTER_MS))


def refusal_frame(reason: Reason, retry_after: float) -> bytes:
    """The notice refusing with ``reason``, suggesting ``retry_after`` seconds."""
    return Refusal(reason, int(round(retry_after * 1000))).to_frame()
