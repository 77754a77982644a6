"""Revocation lists: an issuer withdraws member ids and credentials.

An issuer signs a :class:`RevocationList` (domain ``"p2pd/revocation/1"``):
its key, a serial that grows with every list it publishes, the time of issue,
and the complete set of member ids and credential ids it revokes. Each list
replaces the issuer's previous one (lists are not deltas), so a node only
keeps the newest per issuer. Lists travel between nodes in
:class:`RevocationAnnounce`; docs/protocol.md, section 13.8 "Revocation lists".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from protocol.credentials import ID_PATTERN, Credential
from protocol.messages import Message, register
from protocol.schema import U64, Fixed, Int, ListOf, Nested, Record, Str, f
from protocol.signing import SigningKey, verify

REVOCATION_DOMAIN = "p2pd/revocation/1"
# Both lists together stay well inside one 65,519-byte transport plaintext:
# 512 ids of at most 66 encoded bytes plus 256 ids of 34 bytes is about 43 KB.
MAX_REVOKED_MEMBERS = 512
MAX_REVOKED_CREDENTIALS = 256


@dataclass(frozen=True)
class RevocationList(Record):
    """The issuer's complete, signed list of revoked member and credential ids."""

    issuer_pk: bytes = f(Fixed(32))
    serial: int = f(Int(0, U64))
    issued_at: int = f(Int(0, 2**40))
    member_ids: tuple[str, ...] = f(ListOf(Str(64, ID_PATTERN), MAX_REVOKED_MEMBERS))
    credential_ids: tuple[bytes, ...] = f(ListOf(Fixed(32), MAX_REVOKED_CREDENTIALS))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        """The signed fields: everything but the signature, in order."""
        return self.to_wire()[:-1]

    def verify_signature(self) -> None:
        """Raises :class:`protocol.SignatureError` unless the issuer signed this list."""
        verify(self.issuer_pk, self.signature, REVOCATION_DOMAIN, self.body())

    def revokes(self, cred: Credential) -> bool:
        """True if this list applies to ``cred`` (same issuer, member or credential listed)."""
        if cred.issuer_pk != self.issuer_pk:
            return False
        return cred.member_id in self.member_ids or cred.credential_id in self.credential_ids

    def newer_than(self, other: RevocationList | None) -> bool:
        return other is None or self.serial > other.serial


def issue_revocation(
    issuer_key: SigningKey,
    member_ids: Iterable[str],
    serial: int,
    now: float,
    *,
    credential_ids: Iterable[bytes] = (),
) -> RevocationList:
    """Sign a revocation list. ``serial`` must exceed the issuer's previous one.

    Ids are sorted and deduplicated, so the same set always gives the same
    bytes. Raises :class:`protocol.LocalProtocolError` for invalid ids or
    too many of them.
    """
    members = tuple(sorted(set(member_ids)))
    creds = tuple(sorted(set(credential_ids)))
    unsigned = RevocationList(issuer_key.public, serial, int(now), members, creds, bytes(64))
    sig = issuer_key.sign(REVOCATION_DOMAIN, unsigned.body())
    rl = RevocationList(issuer_key.public, serial, int(now), members, creds, sig)
    rl.validate()
    return rl


@register
@dataclass(frozen=True)
class RevocationAnnounce(Message):
    """Carries one issuer's revocation list; forwarded by nodes that find it newer."""

    TYPE: ClassVar[int] = 18
    revocation_list: RevocationList = f(Nested(RevocationList))
