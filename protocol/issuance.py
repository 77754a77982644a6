"""Pseudonym issuance over a session: a member asks its issuer's node (docs/protocol.md 12.8).

The member sends :class:`PseudonymAsk` (blinded messages, RFC 9474) in its
Noise session with the node that runs the community's pseudonym service; the
session has already authenticated the member's credential, so the ask carries
none. The issuer answers :class:`PseudonymGrant` (its epoch key and one blind
signature per blinded message) or :class:`PseudonymRefused`. An ask with no
blinded messages asks for the epoch key alone and costs no quota.

Also here: how an issuer keeps an epoch's RSA private key at rest
(:func:`wrap_epoch_private`): PKCS#8, encrypted under a password derived
from its Ed25519 issuer key, so a copy of the database alone does not let
anyone sign pseudonyms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from protocol import blind_rsa, canonical
from protocol.messages import Message, register
from protocol.pseudonyms import MAX_EPOCH, MAX_QUOTA, RSA_BYTES, EpochKey
from protocol.reasons import Reason
from protocol.schema import Fixed, Int, ListOf, Nested, Str, f
from protocol.signing import SigningKey

MAX_ASK = 64  # blinded messages per ask: 64 x 256 bytes keeps a grant well under one frame
WRAP_DOMAIN = "p2pd/epoch-key-wrap/1"


@register
@dataclass(frozen=True)
class PseudonymAsk(Message):
    """A member asks its issuer to blind-sign pseudonyms of ``epoch`` (type 46).

    ``blinded`` holds RFC 9474 ``Blind`` outputs under the epoch's key; empty
    asks for the epoch key only.
    """

    TYPE: ClassVar[int] = 46
    CATEGORY: ClassVar[str] = "trade"
    ask_id: bytes = f(Fixed(16))
    epoch: int = f(Int(0, MAX_EPOCH))
    blinded: tuple[bytes, ...] = f(ListOf(Fixed(RSA_BYTES), MAX_ASK))


@register
@dataclass(frozen=True)
class PseudonymGrant(Message):
    """The issuer's answer: its epoch key, a blind signature per blinded message, the quota left (type 47)."""

    TYPE: ClassVar[int] = 47
    CATEGORY: ClassVar[str] = "trade"
    ask_id: bytes = f(Fixed(16))
    epoch_key: EpochKey = f(Nested(EpochKey))
    blind_sigs: tuple[bytes, ...] = f(ListOf(Fixed(RSA_BYTES), MAX_ASK))
    remaining: int = f(Int(0, MAX_QUOTA))


@register
@dataclass(frozen=True)
class PseudonymRefused(Message):
    """The issuer refuses an ask (type 48): over quota, not a trading member, or a bad epoch."""

    TYPE: ClassVar[int] = 50
    CATEGORY: ClassVar[str] = "trade"
    ask_id: bytes = f(Fixed(16))
    reason: int = f(Int(0, 255))
    message: str = f(Str(200))

    @property
    def reason_code(self) -> Reason:
        try:
            return Reason(self.reason)
        except ValueError:
            return Reason.PROTOCOL_ERROR


def generate_epoch_private() -> blind_rsa.PrivateKey:
    """A new RSA-2048 key for one epoch (slow: a good fraction of a second)."""
    return blind_rsa.PrivateKey.generate(RSA_BYTES * 8)


def _wrap_password(issuer: SigningKey) -> bytes:
    data = canonical.pack([WRAP_DOMAIN, issuer.public])
    return hashlib.blake2b(data, key=issuer.seed(), digest_size=32).digest().hex().encode()


def wrap_epoch_private(issuer: SigningKey, key: blind_rsa.PrivateKey) -> bytes:
    """``key`` as encrypted PKCS#8 DER, under a password only ``issuer`` can derive."""
    return key.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(_wrap_password(issuer)))


def unwrap_epoch_private(issuer: SigningKey, data: bytes) -> blind_rsa.PrivateKey:
    """The key :func:`wrap_epoch_private` wrapped. Raises ValueError (wrong issuer key, damaged data)."""
    try:
        key = serialization.load_der_private_key(data, _wrap_password(issuer))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"epoch key does not unwrap with this issuer key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("wrapped epoch key is not an RSA key")
    return blind_rsa.PrivateKey(key)
