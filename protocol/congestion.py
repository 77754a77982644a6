"""Congestion feedback: messages, unforgeable stamps, token bucket, AIMD pacer.

A node that polices a sender (too fast for its allowance, or the node is
loaded) tells it so inside the session with :class:`CongestionFeedback`: the
rate allowed now, for how long, and a *stamp* only that node can compute
(NetFence, SIGCOMM 2010: the congested point stamps unforgeable feedback). The
sender obeys with an :class:`AimdPacer` and acknowledges with
:class:`FeedbackEcho`, which carries the stamp back; the node checks it with
:class:`FeedbackStamper`, so an echo that was forged, altered (a higher rate),
issued to another member, expired or replayed is refused.

Stamp (docs/protocol.md, section 13.4 "Stamp"): keyed BLAKE2b-256, key = the node's
32-byte secret, over ``pack(["p2pd/congestion/1", member_id, category,
rate_milli, duration_ms, expires_ms, serial])``.

Sans-IO: every time is an argument (seconds, float, wall clock for stamps).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import ClassVar

from protocol.canonical import signed_bytes
from protocol.credentials import ID_PATTERN
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import Message, register
from protocol.reasons import Reason
from protocol.schema import U32, U64, Fixed, Int, OneOf, Str, f

CATEGORIES = ("control", "gossip", "trade")
STAMP_DOMAIN = "p2pd/congestion/1"
STAMP_LEN = 32
SECRET_LEN = 32
# Feedback never asks for more than a day of anything, nor lasts longer.
MAX_DURATION_MS = 86_400_000
MAX_EXPIRES_MS = 2**53


class StampError(RemoteProtocolError):
    """Raised by :meth:`FeedbackStamper.check_echo` for an echo we must refuse.

    ``kind`` is ``"forged"`` (the stamp does not verify for this member and
    these values), ``"expired"`` or ``"replayed"`` (not the newest stamp we
    issued for this member and category, or already echoed once).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message, Reason.RATE_LIMITED)
        self.kind = kind


@register
@dataclass(frozen=True)
class CongestionFeedback(Message):
    """Node -> sender: send ``category`` at most ``rate_milli``/1000 msg/s
    for ``duration_ms`` (until ``expires_ms``, the node's unix ms)."""

    TYPE: ClassVar[int] = 16
    category: str = f(OneOf(CATEGORIES))
    rate_milli: int = f(Int(0, U32))
    duration_ms: int = f(Int(1, MAX_DURATION_MS))
    expires_ms: int = f(Int(0, MAX_EXPIRES_MS))
    serial: int = f(Int(0, U64))
    stamp: bytes = f(Fixed(STAMP_LEN))

    @property
    def rate(self) -> float:
        """Allowed messages per second."""
        return self.rate_milli / 1000.0


@register
@dataclass(frozen=True)
class FeedbackEcho(Message):
    """Sender -> node: "I received and apply this feedback" (fields copied)."""

    TYPE: ClassVar[int] = 17
    category: str = f(OneOf(CATEGORIES))
    rate_milli: int = f(Int(0, U32))
    duration_ms: int = f(Int(1, MAX_DURATION_MS))
    expires_ms: int = f(Int(0, MAX_EXPIRES_MS))
    serial: int = f(Int(0, U64))
    stamp: bytes = f(Fixed(STAMP_LEN))

    @classmethod
    def of(cls, fb: CongestionFeedback) -> FeedbackEcho:
        return cls(fb.category, fb.rate_milli, fb.duration_ms, fb.expires_ms, fb.serial, fb.stamp)


_MEMBER = Str(64, ID_PATTERN)


def compute_stamp(
    secret: bytes, member_id: str, category: str, rate_milli: int, duration_ms: int,
    expires_ms: int, serial: int,
) -> bytes:
    """The stamp of one feedback (32 bytes). Raises LocalProtocolError on a bad secret."""
    if len(secret) != SECRET_LEN:
        raise LocalProtocolError("stamp secret must be 32 bytes")
    data = signed_bytes(
        STAMP_DOMAIN, [member_id, category, rate_milli, duration_ms, expires_ms, serial]
    )
    return hashlib.blake2b(data, key=secret, digest_size=STAMP_LEN).digest()


class FeedbackStamper:
    """Issues stamped feedback and checks echoes; one per node.

    Invariant: for each (member, category) only the newest issued serial is
    acceptable in an echo, and only once. Serials grow across all members,
    so a restart with a new secret cannot collide with old stamps either.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_LEN:
            raise LocalProtocolError("stamp secret must be 32 bytes")
        self._secret = secret
        self._serial = 0
        self._latest: dict[tuple[str, str], int] = {}
        self._echoed: dict[tuple[str, str], int] = {}

    def issue(self, member_id: str, category: str, rate: float, now: float,
              duration: float) -> CongestionFeedback:
        """Stamped feedback for ``member_id``: ``rate`` msg/s for ``duration`` s from ``now``."""
        self._serial += 1
        rate_milli = max(0, min(U32, int(rate * 1000)))
        duration_ms = max(1, min(MAX_DURATION_MS, int(duration * 1000)))
        expires_ms = int(now * 1000) + duration_ms
        stamp = compute_stamp(self._secret, member_id, category, rate_milli, duration_ms,
                              expires_ms, self._serial)
        self._latest[(member_id, category)] = self._serial
        return CongestionFeedback(category, rate_milli, duration_ms, expires_ms, self._serial, stamp)

    def check_echo(self, member_id: str, echo: FeedbackEcho, now: float) -> None:
        """Accept ``echo`` from ``member_id`` at ``now`` or raise :class:`StampError`."""
        expected = compute_stamp(self._secret, member_id, echo.category, echo.rate_milli,
                                 echo.duration_ms, echo.expires_ms, echo.serial)
        if not hmac.compare_digest(expected, echo.stamp):
            raise StampError("feedback stamp does not verify", "forged")
        if echo.expires_ms <= int(now * 1000):
            raise StampError("feedback stamp has expired", "expired")
        key = (member_id, echo.category)
        if self._latest.get(key) != echo.serial or self._echoed.get(key, -1) >= echo.serial:
            raise StampError("feedback stamp is not the newest or was echoed before", "replayed")
        self._echoed[key] = echo.serial

    def forget(self, member_id: str) -> None:
        for key in [k for k in self._latest if k[0] == member_id]:
            self._latest.pop(key, None)
            self._echoed.pop(key, None)


# Float refills can end a hair short of a whole token; a caller sleeping for
# that remainder would wake at the same clock value and spin.
_EPSILON = 1e-9


@dataclass
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` spends one if present."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if available; returns whether it did.

        A request larger than the burst (a gossip batch of many items) is
        admitted only when the bucket is full, and leaves it in debt: the
        sender then waits as long as if it had sent the items one by one.
        """
        self.refill(now)
        if self.tokens >= min(n, self.burst) - _EPSILON:
            self.tokens -= n
            return True
        return False

    def delay(self, now: float, n: float = 1.0) -> float:
        """Seconds from ``now`` until ``n`` tokens are available (0 if already)."""
        self.refill(now)
        if self.tokens >= n - _EPSILON:
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (n - self.tokens) / self.rate

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        self.refill(now)
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)


@dataclass
class AimdPacer:
    """Sender-side rate for one (peer, category): additive increase,
    multiplicative decrease on feedback, never above a valid feedback's rate.

    ``ceiling`` is the allowance we assume without feedback; ``increase`` is
    msg/s gained per second without feedback; ``decrease`` the factor
    applied on feedback. ``burst_seconds`` of the current rate may go out
    back to back.
    """

    ceiling: float
    now: float
    increase: float = 1.0
    decrease: float = 0.5
    floor: float = 0.2
    burst_seconds: float = 0.5
    rate: float = field(default=0.0)
    cap: float | None = None
    cap_until: float = 0.0
    _bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            self.rate = self.ceiling
        self._bucket = TokenBucket.full(self.rate, self._burst(), self.now)

    def _burst(self) -> float:
        return max(1.0, self.rate * self.burst_seconds)

    def _limit(self, now: float) -> float:
        if self.cap is not None and now < self.cap_until:
            return min(self.ceiling, self.cap)
        self.cap = None
        return self.ceiling

    def _advance(self, now: float) -> None:
        dt = max(0.0, now - self.now)
        self.now = max(self.now, now)
        self.rate = min(self._limit(now), self.rate + self.increase * dt)
        self._bucket.set_rate(self.rate, self._burst(), now)

    def on_feedback(self, rate: float, duration: float, now: float) -> None:
        """Apply feedback: rate = min(allowed, rate * decrease), capped for ``duration``."""
        self._advance(now)
        self.cap = max(self.floor, rate)
        self.cap_until = now + duration
        self.rate = max(self.floor, min(self.cap, self.rate * self.decrease))
        self._bucket.set_rate(self.rate, self._burst(), now)
        # The policer's bucket is empty when it sends feedback: a saved-up
        # burst sent now would all be excess, so start from zero tokens.
        self._bucket.tokens = min(self._bucket.tokens, 0.0)

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before the next message may go out."""
        self._advance(now)
        return self._bucket.delay(now)

    def sent(self, now: float) -> None:
        """Record one message sent at ``now`` (call after ``delay`` returned 0)."""
        self._advance(now)
        self._bucket.refill(now)
        self._bucket.tokens -= 1.0
