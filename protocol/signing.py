"""Ed25519 keys, signatures and hashes over canonical encodings.

We use ``cryptography``'s Ed25519 (RFC 8032, pure Ed25519, no prehash). Every
signature covers :func:`protocol.canonical.signed_bytes`, whose first element is
a domain string, so a signature made for one kind of object can never be
replayed as another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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


class VerifiedMemo:
    """Signatures that verified, shared by every :func:`verify` while installed.

    For the simulator, which runs a whole community in one process: each of
    its N nodes checks every order and cancel, the same bytes against the
    same key, and Ed25519 verification (about 100 us) then dominated a
    simulated day. Verification is a pure function of (key, signature,
    signed bytes), so a node that finds the exact triple here gets the
    answer it would compute. Only successes are kept: a forged or altered
    signature is always verified, and fails. A daemon never installs one.
    Pseudonym tokens (RSA-PSS, protocol/blind_rsa.py) are kept here too,
    under a key of their own kind (:meth:`check_with`).
    """

    def __init__(self, max_entries: int = 1 << 18) -> None:
        self.max_entries = max_entries
        self._ok: dict[tuple[Any, ...], None] = {}
        self.hits = 0
        self.misses = 0

    def check(self, public: bytes, signature: bytes, data: bytes) -> None:
        """Ed25519: ``signature`` by ``public`` over ``data``; raises InvalidSignature or ValueError."""
        key = (public, signature, data)
        if key in self._ok:  # the hot path: no closure, as check_with would need
            self.hits += 1
            return
        self.check_with(key, lambda: Ed25519PublicKey.from_public_bytes(public).verify(signature, data))

    def check_with(self, key: tuple[Any, ...], verify: Callable[[], None]) -> None:
        """Call ``verify`` (which raises if the check fails) unless ``key`` verified before.

        ``key`` must hold everything the outcome depends on (kind, public
        key, signature, signed bytes). Whatever ``verify`` raises propagates
        and nothing is remembered.
        """
        if key in self._ok:
            self.hits += 1
            return
        self.misses += 1
        verify()
        if len(self._ok) >= self.max_entries:
            del self._ok[next(iter(self._ok))]  # the oldest
        self._ok[key] = None


_memo: VerifiedMemo | None = None


def install_verified_memo(memo: VerifiedMemo | None) -> VerifiedMemo | None:
    """Make :func:`verify` use ``memo`` (None: verify everything); returns the previous one."""
    global _memo
    previous, _memo = _memo, memo
    return previous


def installed_memo() -> VerifiedMemo | None:
    """The memo :func:`install_verified_memo` installed, or None (a daemon)."""
    return _memo


def verify(public: bytes, signature: bytes, domain: str, fields: Sequence[Any]) -> None:
    """Check ``signature`` by ``public`` over ``[domain, *fields]``.

    Raises :class:`SignatureError` if the key is malformed or the signature
    does not verify. Returns None on success.
    """
    if len(public) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise SignatureError("bad key or signature length")
    try:
        data = signed_bytes(domain, fields)
        if _memo is not None:
            _memo.check(public, signature, data)
        else:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"signature does not verify ({domain})") from exc


def digest(data: bytes) -> bytes:
    """BLAKE2b-256 of ``data``: ids of credentials, orders and receipts."""
    return hashlib.blake2b(data, digest_size=32).digest()
