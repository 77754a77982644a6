"""Errors raised by the sans-IO protocol core.

Split by who is at fault, as h11 does: :class:`LocalProtocolError` when our own
caller broke the rules, :class:`RemoteProtocolError` when the peer (or whatever
produced the bytes) did. Every error carries a :class:`~protocol.reasons.Reason`
so the daemon can log it and, where the spec allows, tell the peer.
"""

from __future__ import annotations

from protocol.reasons import Reason


class ProtocolError(Exception):
    """Root of every error the protocol package raises on purpose.

    ``reason`` is the wire reason code; ``str(err)`` is a one-line message for
    the log, never containing secret material.
    """

    def __init__(self, message: str, reason: Reason = Reason.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """Raised when our caller asks for something the protocol forbids.

    Examples: sending an application message before the handshake finished,
    encoding a message whose field is out of range.
    """


class RemoteProtocolError(ProtocolError):
    """Raised when received bytes break the specification.

    Examples: a frame over the length limit, a handshake message that fails to
    decrypt, a credential from an untrusted issuer, a message that fails schema
    validation. The session that raised it is closed.
    """


class DecodeError(RemoteProtocolError):
    """Raised when bytes cannot be decoded into a valid typed object.

    This is the only exception a decoder (``decode_message``,
    ``Credential.decode``, ``Order.decode`` ...) raises for bad input.
    """


class SignatureError(RemoteProtocolError):
    """Raised when a signature does not verify over the canonical encoding."""

    def __init__(self, message: str, reason: Reason = Reason.BAD_SIGNATURE) -> None:
        super().__init__(message, reason)


class CredentialError(RemoteProtocolError):
    """Raised when a membership credential is not acceptable right now.

    ``reason`` says which check failed (untrusted issuer, expired, not yet
    valid, other community, key mismatch, revoked).
    """


class PeerRefused(RemoteProtocolError):
    """Raised by an initiator's session that received a refusal notice
    (docs/protocol.md §13.7) instead of handshake message 2.

    ``reason`` is the notice's (``RATE_LIMITED``, ``TOO_MANY_CONNECTIONS`` or
    ``SHUTDOWN``; anything else is reported as ``PROTOCOL_ERROR``);
    ``retry_after`` the seconds the responder suggested waiting. The notice
    is not authenticated: it is advice for the user and the back-off, never
    a reason to distrust the responder.
    """

    def __init__(self, message: str, reason: Reason, retry_after: float) -> None:
        super().__init__(message, reason)
        self.retry_after = retry_after
