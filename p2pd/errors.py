"""Errors of the daemon layer.

``P2pdError`` is the root. User-facing commands catch it and print its message
(never a traceback). Lower-level causes travel in ``__cause__``.
"""

from __future__ import annotations

from p2pd.market.errors import Refusal
from protocol import Reason


class P2pdError(Exception):
    """Root of the daemon's own errors; ``str()`` is a message for people."""


class ConfigError(P2pdError):
    """A configuration file or value is invalid; the message names the key."""


class Unavailable(P2pdError):
    """Something the daemon needs is busy or unreachable (its port is in use,
    the database server does not answer): the configuration may be right and
    a later try may work. The message names the key."""


class KeyFileError(P2pdError):
    """A key or credential file is missing, unreadable, malformed or unsafe."""


class ShuttingDown(P2pdError):
    """Raised to a caller of a service that has stopped because the daemon is
    shutting down (e.g. a receipt commit queued after the receipt writer
    stopped): nothing was done for it, and it may be retried after a restart."""


class PeerGone(P2pdError):
    """The peer's connection ended (closed, broken or timed out).

    ``reason`` is the protocol reason when one is known (e.g. RATE_LIMITED or
    TOO_MANY_CONNECTIONS from a responder's refusal notice) and
    ``retry_after`` the seconds that responder suggested waiting.
    """

    def __init__(self, message: str, *, reason: Reason | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class NotConnected(P2pdError):
    """No established session with the requested member."""


class TradeError(P2pdError):
    """A post, take, cancel or submission did not happen; ``reason`` is the protocol Reason.

    Split by who is at fault: :class:`TradeRefused` (the market's rules, ours
    or the counterparty's, said no), :class:`PeerFault` (the counterparty
    broke the protocol), :class:`TradeTimeout` (no answer in time),
    :class:`TradeNotStored` (our own store cannot write). A take that failed
    carries its ``trade_id``: retrying with it is the same take.
    """

    def __init__(self, message: str, reason: Reason, remaining_wh: int | None = None, *,
                 trade_id: bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.remaining_wh = remaining_wh
        self.trade_id = trade_id


class TradeRefused(TradeError):
    """Raised when the trading rules refuse the request, here or at the counterparty."""

    @classmethod
    def from_refusal(cls, refusal: Refusal, *, trade_id: bytes | None = None) -> TradeRefused:
        return cls(refusal.message, refusal.reason, refusal.remaining_wh or None, trade_id=trade_id)


class PeerFault(TradeError):
    """Raised when the counterparty answers against the protocol (bad signature, other terms)."""


class TradeTimeout(TradeError):
    """Raised when no answer came in time; a retry with the same trade id is safe."""

    def __init__(self, message: str, reason: Reason = Reason.TIMEOUT, remaining_wh: int | None = None,
                 *, trade_id: bytes | None = None) -> None:
        super().__init__(message, reason, remaining_wh, trade_id=trade_id)


class TradeNotStored(TradeError):
    """Raised when our own store cannot write (disk full, I/O error, read-only;
    ``store.StorageUnavailable`` in ``__cause__``): the order was not posted
    or cancelled, or a take's receipt, which the owner has committed, is not
    recorded here yet. ``reason`` is STORAGE_UNAVAILABLE; the same call (a
    take with the same ``trade_id``) succeeds once the store writes again."""

    def __init__(self, message: str, reason: Reason = Reason.STORAGE_UNAVAILABLE,
                 remaining_wh: int | None = None, *, trade_id: bytes | None = None) -> None:
        super().__init__(message, reason, remaining_wh, trade_id=trade_id)
