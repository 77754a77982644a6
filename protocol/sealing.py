"""Sealing a receipt to its parties: what replica holders keep instead of the receipt.

A sealed box for up to :data:`SLOTS` recipients, addressed to the X25519
keys of their credentials (``noise_pk``, the Noise static key), from
``cryptography``'s X25519 and ChaCha20-Poly1305. docs/protocol.md section 15,
"Sealed entries"::

    sealed = eph_pub (32) ‖ SLOTS × wrap (48) ‖ body
    kek_i  = BLAKE2b-256(X25519(eph, recipient_i) ‖ eph_pub ‖ recipient_i, person "p2pd seal v1")
    wrap_i = ChaCha20-Poly1305(kek_i, nonce 0).encrypt(content_key, aad = eph_pub)
    body   = ChaCha20-Poly1305(content_key, nonce 0).encrypt(padded, aad = eph_pub ‖ digest)
    padded = uint16be(len(receipt)) ‖ receipt ‖ zeros, to a multiple of 256 bytes

Unused slots are random bytes, and nothing names a recipient: a holder
learns neither who can open a box nor how many can (the number of slots is
fixed). Each key is used once (a fresh ephemeral key and content key per
box), so the zero nonce is safe. ``digest`` is the receipt's BLAKE2b-256,
the one its log entry chains over: a box opens only with its own entry's
digest. Randomness is passed in (``random_bytes``); nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import RemoteProtocolError

SLOTS = 3
"""Recipients a box can have: the signers of a receipt (two agents and a broker at most)."""
WRAP = 48
PAD = 256
MAX_PLAIN = 4096
SEALED_MIN = 32 + SLOTS * WRAP + PAD + 16
SEALED_MAX = 32 + SLOTS * WRAP + (2 + MAX_PLAIN + PAD - 1) // PAD * PAD + 16
_NONCE = bytes(12)
_PERSON = b"p2pd seal v1"


class SealError(RemoteProtocolError):
    """A box this key cannot open: not addressed to it, altered, or for another digest."""


def _kek(shared: bytes, eph_pub: bytes, recipient: bytes) -> bytes:
    return hashlib.blake2b(shared + eph_pub + recipient, digest_size=32, person=_PERSON).digest()


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal_receipt(receipt: bytes, digest: bytes, recipients: Sequence[bytes],
         random_bytes: Callable[[int], bytes]) -> bytes:
    """Seal ``receipt`` (at most 4096 bytes) to up to :data:`SLOTS` X25519 public keys.

    Raises ValueError for too many recipients, a receipt too long, or a key
    that is not a usable X25519 point.
    """
    if not 1 <= len(recipients) <= SLOTS:
        raise ValueError(f"1 to {SLOTS} recipients")
    if len(receipt) > MAX_PLAIN:
        raise ValueError("receipt too long to seal")
    eph = X25519PrivateKey.from_private_bytes(random_bytes(32))
    eph_pub = _public(eph)
    content_key = random_bytes(32)
    wraps = []
    for r in recipients:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(r))
        wraps.append(ChaCha20Poly1305(_kek(shared, eph_pub, r)).encrypt(_NONCE, content_key, eph_pub))
    wraps += [random_bytes(WRAP) for _ in range(SLOTS - len(recipients))]
    body = len(receipt).to_bytes(2, "big") + receipt
    body += bytes(-len(body) % PAD)
    return eph_pub + b"".join(wraps) + ChaCha20Poly1305(content_key).encrypt(_NONCE, body, eph_pub + digest)


def open_receipt(sealed: bytes, digest: bytes, private: bytes) -> bytes:
    """The receipt in ``sealed`` if ``private`` (our X25519 key) is one of its recipients.

    Raises :class:`SealError` otherwise, or if the box was altered or belongs
    to another digest. The caller checks that the receipt hashes to ``digest``.
    """
    if not SEALED_MIN <= len(sealed) <= SEALED_MAX:
        raise SealError("not a sealed box")
    eph_pub, body = sealed[:32], sealed[32 + SLOTS * WRAP:]
    key = X25519PrivateKey.from_private_bytes(private)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError as exc:  # a low-order point: nobody's box
        raise SealError("bad ephemeral key") from exc
    kek = ChaCha20Poly1305(_kek(shared, eph_pub, _public(key)))
    for i in range(SLOTS):
        wrap = sealed[32 + i * WRAP : 32 + (i + 1) * WRAP]
        try:
            content_key = kek.decrypt(_NONCE, wrap, eph_pub)
        except InvalidTag:
            continue
        try:
            padded = ChaCha20Poly1305(content_key).decrypt(_NONCE, body, eph_pub + digest)
        except InvalidTag as exc:
            raise SealError("the box was altered or is another entry's") from exc
        size = int.from_bytes(padded[:2], "big")
        if size > len(padded) - 2:
            raise SealError("bad length")
        return padded[2 : 2 + size]
    raise SealError("not addressed to this key")
