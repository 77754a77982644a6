"""Peer exchange: members announce signed network addresses (docs/protocol.md, section 14).

An :class:`AddressAnnouncement` says "member M accepts connections at
host:port, as of issued_at", signed with M's credential signing key under the
domain :data:`ADDRESS_DOMAIN`. Anyone may relay it unchanged; a receiver that
knows M's credential checks the signature before believing or relaying it.
The newest announcement per member (by ``issued_at``) wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.credentials import ID_PATTERN
from protocol.messages import Message, register
from protocol.schema import Fixed, Int, Str, f
from protocol.signing import SigningKey, verify

ADDRESS_DOMAIN = "p2pd/address/1"
# A DNS name or an IPv4/IPv6 literal: letters, digits and . - : only (no
# spaces or control characters that could end up in logs or dial strings).
HOST_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}"


@register
@dataclass(frozen=True)
class AddressAnnouncement(Message):
    """``member_id`` accepts peer connections at ``host:port`` (type 96)."""

    TYPE: ClassVar[int] = 96
    CATEGORY: ClassVar[str] = "gossip"
    member_id: str = f(Str(64, ID_PATTERN))
    host: str = f(Str(253, HOST_PATTERN))
    port: int = f(Int(1, 65535))
    issued_at: int = f(Int(0, 2**40))
    """Unix seconds when the member signed it; a larger value supersedes."""
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        """The signed fields: everything but the signature, in order."""
        return self.to_wire()[:-1]

    @classmethod
    def create(
        cls, key: SigningKey, *, member_id: str, host: str, port: int, issued_at: int
    ) -> AddressAnnouncement:
        """Sign a new announcement. Raises LocalProtocolError on invalid fields."""
        unsigned = cls(member_id, host, port, issued_at, bytes(64))
        ann = cls(member_id, host, port, issued_at, key.sign(ADDRESS_DOMAIN, unsigned.body()))
        ann.validate()
        return ann

    def verify(self, sign_pk: bytes) -> None:
        """Raise :class:`SignatureError` unless ``sign_pk`` signed this announcement."""
        verify(sign_pk, self.signature, ADDRESS_DOMAIN, self.body())

