"""Errors of the daemon layer.

``P2pdError`` is the root. User-facing commands catch it and print its message
(never a traceback). Lower-level causes travel in ``__cause__``.
"""

from __future__ import annotations


class P2pdError(Exception):
    """Root of the daemon's own errors; ``str()`` is a message for people."""


class ConfigError(P2pdError):
    """A configuration file or value is invalid; the message names the key."""


class KeyFileError(P2pdError):
    """A key or credential file is missing, unreadable, malformed or unsafe."""


class PeerGone(P2pdError):
    """The peer's connection ended (closed, broken or timed out)."""


class NotConnected(P2pdError):
    """No established session with the requested member."""


class TradeError(P2pdError):
    """A post, take or cancel was refused; ``reason`` is the protocol Reason."""

    def __init__(self, message: str, reason: object, remaining_wh: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.remaining_wh = remaining_wh
