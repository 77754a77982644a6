"""Pseudonymous S1 orders: epoch keys, pseudonym certificates, sealed intents, owner proofs.

docs/protocol.md section 12.8. In short:

* An issuer makes one RSA-2048 key per **epoch** (a UTC day) and publishes
  it as an :class:`EpochKey`, signed with its Ed25519 issuer key, naming the
  **quota**: how many pseudonyms it signs per member and epoch.
* A member makes a fresh key pair per pseudonym and has the issuer sign it
  **blindly** (RFC 9474, :mod:`protocol.blind_rsa`): the issuer checks the
  member's credential and counts the quota, but never sees the pseudonym. The
  result, a :class:`Pseudonym`, is verifiable by anyone holding the epoch key
  and names no member.
* A pseudonym posts **one** order: its ``order_id`` is derived from the
  pseudonym's signing key (:attr:`Pseudonym.order_id`), so a member has at
  most ``quota`` order ids per epoch and a receipt's ``order_id`` binds the
  pseudonym. The order itself is an ordinary :class:`~protocol.trading.Order`
  whose ``member_id`` is the pseudonym's name (``"ps:"`` + hex of the
  order id), signed with the pseudonym's key.
* A taker reaches the unknown owner with a ``TakeIntent`` relayed back along
  the path the order came, carrying its member id **sealed** to the
  pseudonym's X25519 key (Noise ``N``, :func:`seal`); the owner then opens a
  session with the taker and proves the pseudonym is its own with an
  ``OwnerProof``: the pseudonym key's signature over the order id and both
  parties' credential ids (:func:`sign_owner_proof`).

Sans-IO: randomness (blinding factors, salts, key seeds) is always passed in.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

from protocol import blind_rsa, canonical
from protocol.credentials import CLOCK_SKEW, ID_PATTERN, Credential
from protocol.errors import CredentialError, DecodeError, LocalProtocolError, SignatureError
from protocol.handshake import NoiseError
from protocol.messages import Message, register
from protocol.reasons import Reason
from protocol.schema import Fixed, Int, Nested, Record, Spec, Str, f
from protocol.signing import SigningKey, digest, verify

EPOCH_LEN = 86_400  # seconds: one pseudonym epoch is one UTC day
MAX_EPOCH = 2**40 // EPOCH_LEN
RSA_BYTES = 256  # RSA-2048 moduli and signatures
MAX_QUOTA = 4096
EPOCH_KEY_DOMAIN = "p2pd/epoch-key/1"
PSEUDONYM_DOMAIN = "p2pd/pseudonym/1"
ORDER_ID_DOMAIN = "p2pd/anon-order-id/1"
OWNER_PROOF_DOMAIN = "p2pd/owner-proof/1"
INTENT_DOMAIN = "p2pd/take-intent/1"
KEY_DOMAIN = "p2pd/pseudonym-key/1"
PSEUDONYM_PREFIX = "ps:"
SEAL_PROTOCOL_NAME = b"Noise_N_25519_ChaChaPoly_BLAKE2b"
SEALED_MAX = 128  # bytes of a sealed intent: 32 (e) + payload + 16 (tag)


def epoch_of(t: float) -> int:
    """The epoch that unix time ``t`` falls in."""
    return int(t) // EPOCH_LEN


def is_pseudonym_name(member_id: str) -> bool:
    """True for an order's ``member_id`` that names a pseudonym, not a member."""
    return member_id.startswith(PSEUDONYM_PREFIX)


@dataclass(frozen=True)
class EpochKey(Record):
    """An issuer's RSA key for one epoch, signed with its Ed25519 issuer key."""

    community: str = f(Str(64, ID_PATTERN))
    epoch: int = f(Int(0, MAX_EPOCH))
    modulus: bytes = f(Fixed(RSA_BYTES))
    quota: int = f(Int(1, MAX_QUOTA))
    issuer_pk: bytes = f(Fixed(32))
    signature: bytes = f(Fixed(64))

    def __post_init__(self) -> None:
        if not self.modulus[0] & 0x80 or not self.modulus[-1] & 1:
            raise ValueError("modulus is not an odd 2048-bit number")

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, issuer: SigningKey, *, community: str, epoch: int, modulus: bytes,
               quota: int) -> EpochKey:
        unsigned = cls(community, epoch, modulus, quota, issuer.public, bytes(64))
        key = replace(unsigned, signature=issuer.sign(EPOCH_KEY_DOMAIN, unsigned.body()))
        key.validate()
        return key

    def verify_signature(self) -> None:
        """Raises SignatureError unless the issuer signed this key."""
        verify(self.issuer_pk, self.signature, EPOCH_KEY_DOMAIN, self.body())

    @property
    def public(self) -> blind_rsa.PublicKey:
        return blind_rsa.PublicKey.from_modulus(self.modulus)


@dataclass(frozen=True)
class Pseudonym(Record):
    """A pseudonym certificate: fresh keys with the issuer's blind signature (``token``)."""

    epoch: int = f(Int(0, MAX_EPOCH))
    sign_pk: bytes = f(Fixed(32))
    box_pk: bytes = f(Fixed(32))
    token: bytes = f(Fixed(RSA_BYTES))

    def message(self, community: str) -> bytes:
        """The bytes the issuer signed blindly."""
        return pseudonym_message(community, self.epoch, self.sign_pk, self.box_pk)

    # Both are read for every order and cancel a pseudonym signs, by every
    # node that receives it: computed once per (immutable) instance.
    @functools.cached_property
    def order_id(self) -> bytes:
        """The id of the one order this pseudonym may post."""
        return anon_order_id(self.sign_pk)

    @functools.cached_property
    def member_id(self) -> str:
        """The pseudonym's name, used as ``member_id`` of its order and cancel."""
        return PSEUDONYM_PREFIX + self.order_id.hex()


def pseudonym_message(community: str, epoch: int, sign_pk: bytes, box_pk: bytes) -> bytes:
    return canonical.signed_bytes(PSEUDONYM_DOMAIN, [community, epoch, sign_pk, box_pk])


def anon_order_id(sign_pk: bytes) -> bytes:
    return digest(canonical.pack([ORDER_ID_DOMAIN, sign_pk]))[:16]


class OwnerCert(Spec):
    """``OrderGossip.credential``: a member's :class:`Credential` (10 fields) or a :class:`Pseudonym` (4)."""

    def load(self, value: Any, name: str) -> Credential | Pseudonym:
        if isinstance(value, list) and len(value) == 4:
            return Pseudonym.from_wire(value, name)
        return Credential.from_wire(value, name)

    def dump(self, value: Any) -> Any:
        return value._wire()

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, Credential | Pseudonym):
            raise DecodeError(f"{name}: expected Credential or Pseudonym")
        value.check_spec(name)


def check_pseudonym(p: Pseudonym, epoch_keys: Mapping[int, EpochKey], *, community: str, now: float,
                    max_ahead: int) -> None:
    """Accept ``p`` at ``now`` or raise :class:`CredentialError` (docs/protocol.md 12.8).

    A pseudonym of epoch E is usable from ``E * EPOCH_LEN - CLOCK_SKEW``
    until ``(E + 1) * EPOCH_LEN + max_ahead``: an order posted on the last
    second of its epoch may be for a slot ``max_ahead`` later.
    ``epoch_keys`` holds only keys already checked (trusted issuer, community).
    """
    key = epoch_keys.get(p.epoch)
    if key is None:
        raise CredentialError("no epoch key for the pseudonym's epoch", Reason.UNTRUSTED_ISSUER)
    if now + CLOCK_SKEW < p.epoch * EPOCH_LEN:
        raise CredentialError("pseudonym is not valid yet", Reason.CREDENTIAL_NOT_YET_VALID)
    if now - CLOCK_SKEW >= (p.epoch + 1) * EPOCH_LEN + max_ahead:
        raise CredentialError("pseudonym has expired", Reason.CREDENTIAL_EXPIRED)
    try:
        key.public.verify(p.message(community), p.token)
    except SignatureError as exc:
        raise CredentialError("pseudonym token does not verify", Reason.BAD_SIGNATURE) from exc


# --- the member's side: keys, blinding, finishing ----------------------------------------


def _x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class PseudonymKeys:
    """The private halves of one pseudonym, derived from a member's secret seed."""

    epoch: int
    index: int
    signing: SigningKey
    box_private: bytes

    @property
    def box_pk(self) -> bytes:
        return _x25519_public(self.box_private)

    @classmethod
    def derive(cls, secret: bytes, epoch: int, index: int) -> PseudonymKeys:
        """Keys number ``index`` of ``epoch`` from ``secret`` (32 bytes, never shared).

        Deriving them (BLAKE2b keyed with the secret) lets a node recreate a
        pseudonym's keys from its certificate alone; nobody without the
        secret can link two pseudonyms.
        """
        def part(name: str) -> bytes:
            data = canonical.pack([KEY_DOMAIN, epoch, index, name])
            return hashlib.blake2b(data, key=secret, digest_size=32).digest()
        return cls(epoch, index, SigningKey.from_seed(part("sign")), part("box"))


@dataclass(frozen=True)
class PseudonymRequest:
    """One blinded request: what goes to the issuer, and what the member keeps."""

    keys: PseudonymKeys
    blinded_msg: bytes
    inv: int


def request_pseudonym(epoch_key: EpochKey, keys: PseudonymKeys, *, salt: bytes,
                      random: bytes) -> PseudonymRequest:
    """Blind the pseudonym of ``keys`` for ``epoch_key``'s issuer.

    ``salt`` is 48 random bytes, ``random`` 272. Raises ValueError in the
    (negligible) case that the values are not invertible: draw again.
    """
    message = pseudonym_message(epoch_key.community, keys.epoch, keys.signing.public, keys.box_pk)
    blinded = blind_rsa.blind(epoch_key.public, message, salt=salt, random=random)
    return PseudonymRequest(keys, blinded.blinded_msg, blinded.inv)


def finish_pseudonym(epoch_key: EpochKey, request: PseudonymRequest, blind_sig: bytes) -> Pseudonym:
    """The certificate from the issuer's blind signature. Raises SignatureError if it is bad."""
    keys = request.keys
    message = pseudonym_message(epoch_key.community, keys.epoch, keys.signing.public, keys.box_pk)
    token = blind_rsa.finalize(epoch_key.public, message, blind_sig, request.inv)
    return Pseudonym(keys.epoch, keys.signing.public, keys.box_pk, token)


# --- the issuer's side -------------------------------------------------------------------


class QuotaExceeded(LocalProtocolError):
    """Raised by :meth:`PseudonymIssuer.grant` when a member asks for more than its quota."""


@dataclass
class PseudonymIssuer:
    """The issuer's pseudonym service: one RSA key per epoch, ``quota`` signatures per member.

    ``used`` counts what each member id got per epoch; a real issuer keeps it
    durable. The issuer learns how many pseudonyms a member takes, never which.
    """

    issuer: SigningKey
    community: str
    quota: int = 256
    keys: dict[int, tuple[EpochKey, blind_rsa.PrivateKey]] = field(default_factory=dict)
    used: dict[tuple[str, int], int] = field(default_factory=dict)

    def epoch_key(self, epoch: int) -> EpochKey:
        """The published key of ``epoch`` (made the first time it is asked for)."""
        if epoch not in self.keys:
            private = blind_rsa.PrivateKey.generate(RSA_BYTES * 8)
            public = EpochKey.create(self.issuer, community=self.community, epoch=epoch,
                                     modulus=private.public.modulus(), quota=self.quota)
            self.keys[epoch] = (public, private)
        return self.keys[epoch][0]

    def grant(self, credential: Credential, epoch: int, blinded: Sequence[bytes],
              random: Callable[[int], bytes]) -> list[bytes]:
        """Blind signatures for ``credential``'s member. Raises QuotaExceeded or CredentialError.

        The caller has authenticated the member (a session, or a signed
        request) and checked revocation; here: issued by us, a trading role,
        and within the quota.
        """
        if credential.issuer_pk != self.issuer.public or credential.community != self.community:
            raise CredentialError("not one of our members", Reason.UNTRUSTED_ISSUER)
        if credential.role not in ("prosumer", "representative"):
            raise CredentialError(f"a {credential.role} does not trade", Reason.BAD_ROLE)
        slot = (credential.member_id, epoch)
        if self.used.get(slot, 0) + len(blinded) > self.quota:
            raise QuotaExceeded(f"{credential.member_id} has used its {self.quota} pseudonyms of epoch "
                                f"{epoch}", Reason.OUT_OF_BOUNDS)
        private = self.keys[epoch][1] if epoch in self.keys else None
        if private is None:
            self.epoch_key(epoch)
            private = self.keys[epoch][1]
        sigs = [blind_rsa.blind_sign(private, b, random=random(RSA_BYTES + 16)) for b in blinded]
        self.used[slot] = self.used.get(slot, 0) + len(blinded)
        return sigs


# --- sealed intents and owner proofs -------------------------------------------------------


def intent_context(community: str, order_id: bytes, intent_id: bytes) -> bytes:
    """The Noise prologue of a sealed intent: binds it to one order and intent id."""
    return canonical.signed_bytes(INTENT_DOMAIN, [community, order_id, intent_id])


def seal(box_pk: bytes, context: bytes, payload: bytes, *, ephemeral: bytes | None = None) -> bytes:
    """Encrypt ``payload`` to ``box_pk`` (Noise N, one message; ``context`` is the prologue).

    ``ephemeral`` (an X25519 private key) is for reproducible examples only;
    without it noiseprotocol draws one.
    """
    noise = NoiseConnection.from_name(SEAL_PROTOCOL_NAME)
    noise.set_as_initiator()
    noise.set_prologue(context)
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, box_pk)
    with warnings.catch_warnings():
        if ephemeral is not None:
            # noiseprotocol warns that a fixed ephemeral is for tests: it is.
            warnings.simplefilter("ignore", UserWarning)
            noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        noise.start_handshake()
        return bytes(noise.write_message(payload))


def open_sealed(box_private: bytes, context: bytes, sealed: bytes) -> bytes:
    """The payload of :func:`seal`. Raises DecodeError if it was not sealed to us for ``context``."""
    noise = NoiseConnection.from_name(SEAL_PROTOCOL_NAME)
    noise.set_as_responder()
    noise.set_prologue(context)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, box_private)
    noise.start_handshake()
    try:
        return bytes(noise.read_message(sealed))
    except (*NoiseError, InvalidTag, ValueError) as exc:
        raise DecodeError("sealed intent does not open") from exc


def intent_payload(taker: str) -> bytes:
    return canonical.pack([taker])


def read_intent_payload(payload: bytes) -> str:
    """The taker's member id from an opened intent. Raises DecodeError."""
    value = canonical.unpack(payload)
    if not isinstance(value, list) or len(value) != 1:
        raise DecodeError("intent payload: expected [taker]")
    taker: str = Str(64, ID_PATTERN).load(value[0], "intent.taker")
    return taker


def _proof_fields(community: str, order_id: bytes, owner_credential_id: bytes,
                  taker_credential_id: bytes) -> list[object]:
    return [community, order_id, owner_credential_id, taker_credential_id]


def sign_owner_proof(key: SigningKey, *, community: str, order_id: bytes, owner_credential_id: bytes,
                     taker_credential_id: bytes) -> bytes:
    """The pseudonym's signature saying: order ``order_id`` is the owner's, told to this taker."""
    return key.sign(OWNER_PROOF_DOMAIN, _proof_fields(community, order_id, owner_credential_id,
                                                      taker_credential_id))


def verify_owner_proof(sign_pk: bytes, signature: bytes, *, community: str, order_id: bytes,
                       owner_credential_id: bytes, taker_credential_id: bytes) -> None:
    """Raises SignatureError unless the pseudonym ``sign_pk`` made this proof."""
    verify(sign_pk, signature, OWNER_PROOF_DOMAIN,
           _proof_fields(community, order_id, owner_credential_id, taker_credential_id))


@register
@dataclass(frozen=True)
class EpochKeyAnnounce(Message):
    """An issuer's epoch key; a node sends those it holds when a session opens, and forwards new ones."""

    TYPE: ClassVar[int] = 19
    CATEGORY: ClassVar[str] = "control"
    epoch_key: EpochKey = f(Nested(EpochKey))
