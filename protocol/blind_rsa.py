"""RSA blind signatures, RFC 9474 (RSABSSA-SHA384-PSS), on ``cryptography``'s RSA.

Why this module exists: a member gets pseudonym certificates from its issuer
without the issuer seeing them (docs/protocol.md section 12.8). RFC 9474 is
the IRTF's specification of Chaum's RSA blind signatures; its output is a
plain RSASSA-PSS signature, so *verifying* needs nothing but
``cryptography``'s PSS verify (every node verifies; only members blind and
only issuers sign). No maintained Python package implements the RFC, so the
three steps that ``cryptography`` does not expose are here, each a few lines
of the RFC's own pseudocode, and tests/protocol/test_blind_rsa.py checks them
against the RFC's test vectors (Appendix A):

* ``Blind`` (member): EMSA-PSS-ENCODE the message (RFC 8017 9.1.1, SHA-384,
  MGF1-SHA-384, 48-byte salt), multiply by ``r^e`` for a random ``r``;
* ``BlindSign`` (issuer): the RSA private operation on the blinded value,
  checked with the public operation before it is returned (RFC 9474 4.3);
* ``Finalize`` (member): multiply by ``r^-1`` and verify the result as an
  RSASSA-PSS signature, which it is.

Variant: RSABSSA-SHA384-PSS-Deterministic (no message prefix). RFC 9474
section 5 allows the deterministic variant when the message carries enough
entropy of the client's choosing; ours always holds two fresh public keys.
:func:`blind` takes an optional ``prefix`` only so that the Randomized test
vector can be checked too.

Randomness is an argument (STYLE rule 2): ``r`` and the salt come from the
caller. The private operation uses Python integers, which are not constant
time; :func:`blind_sign` therefore blinds its input once more with a fresh
``u`` (RSA base blinding) so its timing does not depend on the value it signs.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocol.errors import SignatureError
from protocol.signing import installed_memo

HASH_LEN = 48  # SHA-384
SALT_LEN = 48  # RFC 9474 RSABSSA-SHA384-PSS: sLen = hLen
PUBLIC_EXPONENT = 65537
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=SALT_LEN)


def _load_powmod() -> Callable[[int, int, int], int]:
    # A blind signature is a handful of modular exponentiations (and
    # inverses: exponent -1), and the issuer signs every member's
    # pseudonyms: Python's pow takes about 2.5 ms for each of the two
    # 1024-bit CRT halves, GMP's (gmpy2, the optional "fast" extra) about
    # 0.6 ms. Same integers either way; like pow, a non-invertible base
    # raises ValueError.
    try:
        gmpy2 = importlib.import_module("gmpy2")
    except ImportError:
        return pow
    powmod = gmpy2.powmod

    def gmp_powmod(base: int, exp: int, mod: int) -> int:
        try:
            return int(powmod(base, exp, mod))
        except ZeroDivisionError as exc:
            raise ValueError("base is not invertible") from exc

    return gmp_powmod


_powmod = _load_powmod()


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    for counter in range(-(-length // HASH_LEN)):
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
    return out[:length]


def emsa_pss_encode(message: bytes, em_bits: int, salt: bytes) -> bytes:
    """RFC 8017 9.1.1 with SHA-384 and MGF1-SHA-384. Raises ValueError if too long."""
    em_len = -(-em_bits // 8)
    if em_len < HASH_LEN + len(salt) + 2:
        raise ValueError("encoding error: modulus too small")
    m_hash = hashlib.sha384(message).digest()
    h = hashlib.sha384(bytes(8) + m_hash + salt).digest()
    db = bytes(em_len - len(salt) - HASH_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - HASH_LEN - 1), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


@dataclass(frozen=True)
class PublicKey:
    """An RSA public key ``(n, e)`` as RFC 9474 uses it."""

    n: int
    e: int = PUBLIC_EXPONENT

    @property
    def modulus_len(self) -> int:
        return (self.n.bit_length() + 7) // 8

    @classmethod
    def from_modulus(cls, modulus: bytes) -> PublicKey:
        return cls(int.from_bytes(modulus, "big"))

    def modulus(self) -> bytes:
        return self.n.to_bytes(self.modulus_len, "big")

    def verify(self, message: bytes, signature: bytes) -> None:
        """RSASSA-PSS-VERIFY (SHA-384, sLen 48) by ``cryptography``. Raises SignatureError.

        Under the simulator's shared :class:`protocol.signing.VerifiedMemo`
        a token the community verified already costs a lookup: every node
        checks the same pseudonym token on the orders it carries.
        """
        try:
            memo = installed_memo()
            if memo is None:
                self._verify(message, signature)
            else:
                memo.check_with(("rsa-pss", self.n, self.e, signature, message),
                                lambda: self._verify(message, signature))
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError("blind RSA signature does not verify") from exc

    def _verify(self, message: bytes, signature: bytes) -> None:
        # The key object is built once per PublicKey (an epoch key is checked
        # for every pseudonym order), kept outside the dataclass fields.
        key: rsa.RSAPublicKey | None = self.__dict__.get("_key")
        if key is None:
            key = rsa.RSAPublicNumbers(self.e, self.n).public_key()
            object.__setattr__(self, "_key", key)
        key.verify(signature, message, _PSS, hashes.SHA384())


def _int_from_random(random: bytes, n: int) -> int:
    # The caller passes modulus_len + 16 random bytes: reduced mod n, the bias
    # is below 2^-128 (RFC 9474 asks for r uniform in [1, n)).
    value = int.from_bytes(random, "big") % n
    if value == 0 or math.gcd(value, n) != 1:
        raise ValueError("blinding value is not invertible; draw again")
    return value


@dataclass(frozen=True)
class Blinded:
    """What :func:`blind` returns: the value for the issuer, and ``inv`` kept secret."""

    blinded_msg: bytes
    inv: int


def blind(pk: PublicKey, message: bytes, *, salt: bytes, random: bytes | None = None,
          r: int | None = None, prefix: bytes = b"") -> Blinded:
    """RFC 9474 ``Blind``: ``random`` (modulus_len + 16 bytes) or ``r`` picks the factor.

    Raises ValueError when the encoded message or ``r`` is not invertible
    modulo n (negligibly rare; draw again).
    """
    encoded = emsa_pss_encode(prefix + message, pk.n.bit_length() - 1, salt)
    m = int.from_bytes(encoded, "big")
    if math.gcd(m, pk.n) != 1:
        raise ValueError("invalid input: message not coprime with n")
    if r is None:
        if random is None:
            raise ValueError("blind needs random bytes or r")
        r = _int_from_random(random, pk.n)
    inv = _powmod(r, -1, pk.n)
    z = m * _powmod(r, pk.e, pk.n) % pk.n
    return Blinded(z.to_bytes(pk.modulus_len, "big"), inv)


@dataclass(frozen=True)
class PrivateKey:
    """An issuer's RSA private key, with its CRT values."""

    key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, bits: int = 2048) -> PrivateKey:
        return cls(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits))

    @classmethod
    def from_factors(cls, p: int, q: int, e: int = PUBLIC_EXPONENT) -> PrivateKey:
        """The key with primes ``p`` and ``q`` (the RFC's test vectors). Raises ValueError."""
        d = pow(e, -1, (p - 1) * (q - 1))
        numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                        rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
        return cls(numbers.private_key())

    @property
    def public(self) -> PublicKey:
        numbers = self.key.public_key().public_numbers()
        return PublicKey(numbers.n, numbers.e)


def blind_sign(sk: PrivateKey, blinded_msg: bytes, *, random: bytes) -> bytes:
    """RFC 9474 ``BlindSign``; ``random`` (modulus_len + 16 bytes) base-blinds the operation.

    Raises ValueError if ``blinded_msg`` is not a value below n of the
    modulus length, or if the result fails its check (a fault).
    """
    pk = sk.public
    if len(blinded_msg) != pk.modulus_len:
        raise ValueError("blinded message has the wrong length")
    m = int.from_bytes(blinded_msg, "big")
    if m >= pk.n:
        raise ValueError("blinded message out of range")
    priv = sk.key.private_numbers()
    u = _int_from_random(random, pk.n)
    c = m * _powmod(u, pk.e, pk.n) % pk.n
    # CRT: two half-size exponentiations.
    s1 = _powmod(c % priv.p, priv.dmp1, priv.p)
    s2 = _powmod(c % priv.q, priv.dmq1, priv.q)
    h = priv.iqmp * (s1 - s2) % priv.p
    s = (s2 + h * priv.q) * _powmod(u, -1, pk.n) % pk.n
    if _powmod(s, pk.e, pk.n) != m:
        raise ValueError("signing failure")
    return s.to_bytes(pk.modulus_len, "big")


def finalize(pk: PublicKey, message: bytes, blind_sig: bytes, inv: int, *, prefix: bytes = b"") -> bytes:
    """RFC 9474 ``Finalize``: the signature over ``prefix + message``. Raises SignatureError."""
    if len(blind_sig) != pk.modulus_len:
        raise SignatureError("blind signature has the wrong length")
    s = int.from_bytes(blind_sig, "big") * inv % pk.n
    sig = s.to_bytes(pk.modulus_len, "big")
    pk.verify(prefix + message, sig)
    return sig
