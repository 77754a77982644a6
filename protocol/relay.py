"""Takes relayed through a common peer (docs/protocol.md §12.9).

A household behind a NAT accepts no connection; it dials out to a few peers.
Two members that cannot reach each other trade through a member both have a
session with: the taker sends :class:`RelayedTake` (its signed terms and its
credential) to that relay, which forwards it once, unchanged, to the order's
owner; the owner answers with :class:`RelayedAnswer` (the receipt, or a
:class:`TradeRefusal` it signed), which the relay forwards back. Both ends
check every signature: the relay can drop a take or an answer, never forge
or alter one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.credentials import ID_PATTERN, Credential
from protocol.messages import Message, register
from protocol.reasons import Reason
from protocol.schema import Fixed, Int, Nested, Optional, Record, Str, f
from protocol.signing import SigningKey, verify
from protocol.trading import MAX_WH, Receipt, TradeTerms

REFUSAL_DOMAIN = "p2pd/trade-refusal/1"
RELAY_HOPS = 1
"""A relayed take crosses at most this many relays (one, in version 1)."""


@dataclass(frozen=True)
class TradeRefusal(Record):
    """An owner's refusal of a take, signed by the owner (domain ``p2pd/trade-refusal/1``).

    The fields of :class:`protocol.TradeRefused` plus the ``owner`` who signs;
    a relay that forwards it cannot change a field without breaking the
    signature.
    """

    trade_id: bytes = f(Fixed(16))
    owner: str = f(Str(64, ID_PATTERN))
    reason: int = f(Int(0, 255))
    remaining_wh: int = f(Int(0, MAX_WH))
    message: str = f(Str(200))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        """The signed fields: all but the signature."""
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, *, trade_id: bytes, owner: str, reason: int, remaining_wh: int,
               message: str) -> TradeRefusal:
        """Sign a refusal; ``message`` is cut to 200 bytes of UTF-8."""
        text = message.encode("utf-8")[:200].decode("utf-8", "ignore")
        unsigned = cls(trade_id, owner, reason, remaining_wh, text, bytes(64))
        signed = cls(trade_id, owner, reason, remaining_wh, text, key.sign(REFUSAL_DOMAIN, unsigned.body()))
        signed.validate()
        return signed

    def verify(self, sign_pk: bytes) -> None:
        """Raises :class:`protocol.SignatureError` unless ``sign_pk`` signed it."""
        verify(sign_pk, self.signature, REFUSAL_DOMAIN, self.body())

    @property
    def reason_code(self) -> Reason:
        try:
            return Reason(self.reason)
        except ValueError:
            return Reason.PROTOCOL_ERROR


@register
@dataclass(frozen=True)
class RelayedTake(Message):
    """A take for ``owner``, sent to a relay (``hops`` 1) and forwarded by it (``hops`` 0).

    ``credential`` is the taker's, so the owner can check the taker without a
    session with it; ``terms`` and ``taker_sig`` are those of a ``Take``.
    """

    TYPE: ClassVar[int] = 48
    CATEGORY: ClassVar[str] = "trade"
    owner: str = f(Str(64, ID_PATTERN))
    hops: int = f(Int(0, RELAY_HOPS))
    credential: Credential = f(Nested(Credential))
    terms: TradeTerms = f(Nested(TradeTerms))
    taker_sig: bytes = f(Fixed(64))


@register
@dataclass(frozen=True)
class RelayedAnswer(Message):
    """The owner's answer to a :class:`RelayedTake`: exactly one of ``receipt`` and ``refusal``."""

    TYPE: ClassVar[int] = 49
    CATEGORY: ClassVar[str] = "trade"
    trade_id: bytes = f(Fixed(16))
    receipt: Receipt | None = f(Optional(Nested(Receipt)))
    refusal: TradeRefusal | None = f(Optional(Nested(TradeRefusal)))

    def __post_init__(self) -> None:
        if (self.receipt is None) == (self.refusal is None):
            raise ValueError("exactly one of receipt and refusal")
        answered = self.receipt.terms.trade_id if self.receipt is not None else (
            self.refusal.trade_id if self.refusal is not None else b"")
        if answered != self.trade_id:
            raise ValueError("the answer is for another trade_id")
