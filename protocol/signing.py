"""Ed25519 keys, signatures and hashes over canonical encodings.

We use ``cryptography``'s Ed25519 (RFC 8032, pure Ed25519, no prehash). Every
signature covers :func:`protocol.canonical.signed_bytes`, whose first element is
a domain string, so a signature made for one kind of object can never be
replayed as another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.canonical import signed_bytes
from protocol.errors import SignatureError

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its 32-byte public key."""

    private: Ed25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        return cls(key, _raw_public(key))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Load from the 32-byte RFC 8032 private seed. Raises ValueError."""
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(key, _raw_public(key))

    def seed(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, domain: str, fields: Sequence[Any]) -> bytes:
        """Sign ``[domain, *fields]`` canonically; returns 64 bytes."""
        return self.private.sign(signed_bytes(domain, fields))


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify(public: bytes, signature: bytes, domain: str, fields: Sequence[Any]) -> None:
    """Check ``signature`` by ``public`` over ``[domain, *fields]``.

    Raises :class:`SignatureError` if the key is malformed or the signature
    does not verify. Returns None on success.
    """
    if len(public) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise SignatureError("bad key or signature length")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_bytes(domain, fields))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"signature does not verify ({domain})") from exc


def digest(data: bytes) -> bytes:
    """BLAKE2b-256 of ``data``: ids of credentials, orders and receipts."""
    return hashlib.blake2b(data, digest_size=32).digest()
