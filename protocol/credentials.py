"""Membership credentials: who may join a community, signed by an issuer.

A credential binds a member id, its role, its metering point (one credential
per grid connection, which is what makes identities scarce), the member's
Ed25519 signing key and X25519 Noise key, the community and a validity window.
It is signed by an issuer (the community or grid operator) whose public key the
nodes are configured to trust. See docs/protocol.md, "Membership credential".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, MutableMapping
from dataclasses import dataclass, field

from protocol.errors import CredentialError, SignatureError
from protocol.reasons import Reason
from protocol.schema import Fixed, Int, OneOf, Record, Str, f
from protocol.signing import SigningKey, digest, verify

ROLES = ("prosumer", "representative", "broker")
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
METERING_POINT_PATTERN = r"[A-Za-z0-9]{1,34}"
CREDENTIAL_DOMAIN = "p2pd/credential/1"
# Clock skew we tolerate between an issuer, us and a peer (seconds).
CLOCK_SKEW = 300
# Credentials whose issuer signature a TrustPolicy remembers as verified.
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Credential(Record):
    """A signed membership credential (wire: array of these 10 fields)."""

    DECODED_CACHE = 4096  # one rides with every order: decode each once
    community: str = f(Str(64, ID_PATTERN))
    member_id: str = f(Str(64, ID_PATTERN))
    role: str = f(OneOf(ROLES))
    metering_point: str = f(Str(34, METERING_POINT_PATTERN))
    sign_pk: bytes = f(Fixed(32))
    noise_pk: bytes = f(Fixed(32))
    valid_from: int = f(Int(0, 2**40))
    valid_until: int = f(Int(0, 2**40))
    issuer_pk: bytes = f(Fixed(32))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        """The signed fields: everything but the signature, in order."""
        return self.to_wire()[:-1]

    @property
    def credential_id(self) -> bytes:
        """BLAKE2b-256 of the encoded credential: a stable handle for logs and revocation."""
        return digest(self.encode())

    @classmethod
    def issue(
        cls,
        issuer: SigningKey,
        *,
        community: str,
        member_id: str,
        role: str,
        metering_point: str,
        sign_pk: bytes,
        noise_pk: bytes,
        valid_from: int,
        valid_until: int,
    ) -> Credential:
        """Create and sign a credential. Raises LocalProtocolError on bad fields."""
        unsigned = cls(
            community, member_id, role, metering_point, sign_pk, noise_pk,
            valid_from, valid_until, issuer.public, bytes(64),
        )
        sig = issuer.sign(CREDENTIAL_DOMAIN, unsigned.body())
        cred = dataclasses.replace(unsigned, signature=sig)
        cred.validate()
        return cred

    def verify_signature(self) -> None:
        """Raises SignatureError if the issuer's signature does not verify."""
        verify(self.issuer_pk, self.signature, CREDENTIAL_DOMAIN, self.body())


@dataclass(frozen=True)
class TrustPolicy:
    """What a node accepts: its community, trusted issuers, and revocations.

    ``is_revoked`` is called with the credential and returns True if the
    member or this credential has been revoked by its issuer.

    Every order carries its owner's credential, so a node sees the same few
    credentials over and over. The policy remembers (up to
    VERIFIED_CACHE_SIZE) credentials whose issuer signature verified, keyed by
    the whole credential (equal in every field, signature included, which is
    equal bytes). Only that verify is skipped: trust in the issuer, community,
    validity window, revocation and key binding are checked on every call.
    ``dataclasses.replace(policy)`` gives a copy with an empty cache.
    """

    community: str
    trusted_issuers: frozenset[bytes]
    is_revoked: Callable[[Credential], bool] = lambda cred: False
    _verified: dict[Credential, None] = field(default_factory=dict, init=False, repr=False,
                                              compare=False, hash=False)

    def check(self, cred: Credential, now: float, noise_pk: bytes | None = None) -> None:
        """Accept ``cred`` at time ``now`` or raise :class:`CredentialError`.

        Checks, in this order (the first failure is the reason reported):
        issuer trusted, signature, community, validity window (with
        CLOCK_SKEW), revocation, and if ``noise_pk`` is given that the
        credential binds that very Noise static key.
        """
        check_credential(
            cred, now=now, community=self.community, trusted_issuers=self.trusted_issuers,
            noise_pk=noise_pk, is_revoked=self.is_revoked, verified=self._verified,
        )


def check_credential(
    cred: Credential,
    *,
    now: float,
    community: str,
    trusted_issuers: Collection[bytes],
    noise_pk: bytes | None = None,
    is_revoked: Callable[[Credential], bool] = lambda cred: False,
    verified: MutableMapping[Credential, None] | None = None,
) -> None:
    """See :meth:`TrustPolicy.check`; ``verified`` is its cache of good signatures."""
    if cred.issuer_pk not in trusted_issuers:
        raise CredentialError("credential issuer is not trusted", Reason.UNTRUSTED_ISSUER)
    if verified is None or cred not in verified:
        try:
            cred.verify_signature()
        except SignatureError as exc:
            raise CredentialError("credential signature is invalid", Reason.BAD_SIGNATURE) from exc
        if verified is not None:
            if len(verified) >= VERIFIED_CACHE_SIZE:
                del verified[next(iter(verified))]  # the oldest
            verified[cred] = None
    if cred.community != community:
        raise CredentialError(
            f"credential is for community {cred.community!r}", Reason.WRONG_COMMUNITY
        )
    if now + CLOCK_SKEW < cred.valid_from:
        raise CredentialError("credential is not valid yet", Reason.CREDENTIAL_NOT_YET_VALID)
    if now - CLOCK_SKEW >= cred.valid_until:
        raise CredentialError("credential has expired", Reason.CREDENTIAL_EXPIRED)
    if is_revoked(cred):
        raise CredentialError("credential has been revoked", Reason.REVOKED)
    if noise_pk is not None and noise_pk != cred.noise_pk:
        raise CredentialError(
            "credential does not bind the key used in the handshake", Reason.KEY_MISMATCH
        )
