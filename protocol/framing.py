"""Length-prefixed frames: ``u16 big-endian length || body``.

The length limit is checked on the two prefix bytes, before any body byte is
buffered, so a peer can never make us hold more than ``max_frame + 2`` bytes of
an incomplete frame. The limit is small during the handshake and the Noise
maximum (65,535) afterwards.
"""

from __future__ import annotations

import struct

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.reasons import Reason

HANDSHAKE_MAX_FRAME = 1024
NOISE_MAX_FRAME = 65535
_PREFIX = struct.Struct(">H")


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length. Raises LocalProtocolError if too long."""
    if not 0 < len(body) <= NOISE_MAX_FRAME:
        raise LocalProtocolError(f"frame body of {len(body)} bytes")
    return _PREFIX.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frames no longer than ``max_frame``."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame body, or None if more bytes are needed.

        Raises :class:`RemoteProtocolError` (FRAME_TOO_LARGE) for a length over
        the limit and (PROTOCOL_ERROR) for a zero length.
        """
        if len(self._buf) < 2:
            return None
        (length,) = _PREFIX.unpack_from(self._buf)
        if length == 0:
            raise RemoteProtocolError("empty frame", Reason.PROTOCOL_ERROR)
        if length > self.max_frame:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds limit {self.max_frame}", Reason.FRAME_TOO_LARGE
            )
        if len(self._buf) < 2 + length:
            return None
        body = bytes(self._buf[2 : 2 + length])
        del self._buf[: 2 + length]
        return body
