"""Hash-chained receipt logs and signed heads (no single point of failure).

Every node appends each receipt it signs to a log; entry ``seq`` (from 1) has

    entry_hash(seq) = BLAKE2b-256(pack(["p2pd/log-entry/2", entry_hash(seq-1), seq, BLAKE2b-256(receipt)]))

with ``entry_hash(0)`` = 32 zero bytes and ``receipt`` the receipt's
canonical bytes. The chain runs over each receipt's digest, so whoever holds
an entry for others keeps the digest and the receipt sealed to its parties
(:class:`SealedEntry`, protocol/sealing.py) and still checks the chain
against the signed heads without reading the receipt. A :class:`LogHead` — member, seq, head hash — is signed
(domain ``p2pd/log-head/2``) and gossiped. Two valid heads of one member with
the same seq and different hashes are an :class:`EquivocationProof`; a head
that the member's own entries do not reproduce is a fork. docs/protocol.md
section 15.

A node fills gaps in a log it follows with :class:`LogRequest` and
:class:`LogEntries`: consecutive sealed entries after a seq, from the member
itself or anyone holding them, ending at a head the member signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from protocol.canonical import pack
from protocol.credentials import ID_PATTERN, Credential
from protocol.errors import SignatureError
from protocol.messages import Message, register
from protocol.schema import Bin, Fixed, Int, ListOf, Nested, Optional, Record, Str, f
from protocol.sealing import SEALED_MAX, SEALED_MIN
from protocol.signing import SigningKey, digest, verify
from protocol.trading import MAX_HOPS, MAX_TIME

# The head domain names the chain it is over. Heads signed under
# "p2pd/log-head/1" were over the "p2pd/log-entry/1" chain (whole receipts) or,
# briefly, over this one: the same seq had another hash then, so a v1 head is
# never compared with a v2 head. It is obsolete (LogHead.obsolete), never
# evidence of a fork. docs/protocol.md 15, "Upgrading from log-entry/1".
HEAD_DOMAIN = "p2pd/log-head/2"
OBSOLETE_HEAD_DOMAIN = "p2pd/log-head/1"
ENTRY_DOMAIN = "p2pd/log-entry/2"
GENESIS = bytes(32)
RECEIPT_V1, RECEIPT_V2 = 1, 2
MAX_RECEIPT_BYTES = 4096
LOG_PAGE_MAX = 8  # entries in one LogEntries (8 x 4 KiB fits a frame)


def entry_hash(prev: bytes, seq: int, receipt: bytes) -> bytes:
    """The hash of entry ``seq`` holding ``receipt``, after ``prev``."""
    return entry_hash_of(prev, seq, digest(receipt))


def entry_hash_of(prev: bytes, seq: int, receipt_digest: bytes) -> bytes:
    """The same from the receipt's digest: what a holder of a sealed entry computes."""
    return digest(pack([ENTRY_DOMAIN, prev, seq, receipt_digest]))


class ForkError(ValueError):
    """A log's entries do not reproduce a head its owner signed."""


@dataclass(frozen=True)
class LogHead(Record):
    member: str = f(Str(64, ID_PATTERN))
    seq: int = f(Int(0, MAX_TIME))
    head_hash: bytes = f(Fixed(32))
    signature: bytes = f(Fixed(64))

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, member: str, seq: int, head_hash: bytes) -> LogHead:
        unsigned = cls(member, seq, head_hash, bytes(64))
        return replace(unsigned, signature=key.sign(HEAD_DOMAIN, unsigned.body()))

    def verify(self, sign_pk: bytes) -> None:
        verify(sign_pk, self.signature, HEAD_DOMAIN, self.body())

    def obsolete(self, sign_pk: bytes) -> bool:
        """True if ``sign_pk`` signed this head under the old domain ``p2pd/log-head/1``:
        a head over a chain no longer used, which proves nothing about the current one."""
        try:
            verify(sign_pk, self.signature, OBSOLETE_HEAD_DOMAIN, self.body())
        except SignatureError:
            return False
        return True


@dataclass(frozen=True)
class EquivocationProof(Record):
    """Two heads signed by one member for one seq with different hashes."""

    head_a: LogHead = f(Nested(LogHead))
    head_b: LogHead = f(Nested(LogHead))

    def check(self, cred: Credential) -> None:
        """Raise ValueError/SignatureError unless this proves ``cred``'s member equivocated."""
        a, b = self.head_a, self.head_b
        if not (a.member == b.member == cred.member_id):
            raise ValueError("heads of different members")
        if a.seq != b.seq or a.head_hash == b.head_hash:
            raise ValueError("heads do not conflict")
        a.verify(cred.sign_pk)
        b.verify(cred.sign_pk)


class ReceiptChain:
    """The append-only log itself (in memory; callers persist the receipts)."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = [GENESIS]
        self.entries: list[bytes] = []

    @property
    def seq(self) -> int:
        return len(self.entries)

    @property
    def head_hash(self) -> bytes:
        return self.hashes[-1]

    def append(self, receipt: bytes) -> int:
        seq = len(self.entries) + 1
        self.hashes.append(entry_hash(self.hashes[-1], seq, receipt))
        self.entries.append(receipt)
        return seq

    def head(self, key: SigningKey, member: str) -> LogHead:
        return LogHead.create(key, member, self.seq, self.head_hash)


def verify_entries(entries: Sequence[bytes], head: LogHead, sign_pk: bytes) -> None:
    """Check that ``entries`` (from seq 1) reproduce the signed ``head``.

    Raises SignatureError if the head is not signed by ``sign_pk`` and
    :class:`ForkError` if the entries give another hash: the member showed us
    one history and signed another.
    """
    head.verify(sign_pk)
    if head.seq > len(entries):
        raise ForkError(f"head at seq {head.seq} but only {len(entries)} entries")
    h = GENESIS
    for seq, receipt in enumerate(entries[: head.seq], start=1):
        h = entry_hash(h, seq, receipt)
    if h != head.head_hash:
        raise ForkError(f"entries do not reproduce the head at seq {head.seq}")



@register
@dataclass(frozen=True)
class HeadGossip(Message):
    TYPE: ClassVar[int] = 80
    CATEGORY: ClassVar[str] = "gossip"
    head: LogHead = f(Nested(LogHead))
    credential: Credential = f(Nested(Credential))
    hops: int = f(Int(0, MAX_HOPS))


@dataclass(frozen=True)
class SealedEntry(Record):
    """A log entry as others hold it: the receipt's digest (what the chain runs over) and
    the receipt sealed to the members who signed it (protocol/sealing.py)."""

    digest: bytes = f(Fixed(32))
    sealed: bytes = f(Bin(SEALED_MIN, SEALED_MAX))


@register
@dataclass(frozen=True)
class ReceiptReplica(Message):
    """The sender's newest log entry, sealed, and its head after it."""

    TYPE: ClassVar[int] = 81
    CATEGORY: ClassVar[str] = "gossip"
    entry: SealedEntry = f(Nested(SealedEntry))
    head: LogHead = f(Nested(LogHead))


@register
@dataclass(frozen=True)
class EquivocationGossip(Message):
    TYPE: ClassVar[int] = 82
    CATEGORY: ClassVar[str] = "gossip"
    proof: EquivocationProof = f(Nested(EquivocationProof))
    credential: Credential = f(Nested(Credential))
    hops: int = f(Int(0, MAX_HOPS))


@register
@dataclass(frozen=True)
class LogRequest(Message):
    """Send me up to ``limit`` consecutive entries of ``member``'s log after seq ``after``."""

    TYPE: ClassVar[int] = 83
    CATEGORY: ClassVar[str] = "gossip"
    member: str = f(Str(64, ID_PATTERN))
    after: int = f(Int(0, MAX_TIME))
    limit: int = f(Int(1, LOG_PAGE_MAX))


@dataclass(frozen=True)
class LogEntry(Record):
    """Entry ``seq`` of a log, sealed."""

    seq: int = f(Int(1, MAX_TIME))
    entry: SealedEntry = f(Nested(SealedEntry))


@register
@dataclass(frozen=True)
class LogEntries(Message):
    """The answer to a LogRequest: entries ``after + 1`` …, ``member``'s head at the last
    and ``member``'s credential (to check the head with).

    No entries (and no head or credential) when the sender holds none that it
    can end at a head of the member's.
    """

    TYPE: ClassVar[int] = 84
    CATEGORY: ClassVar[str] = "gossip"
    member: str = f(Str(64, ID_PATTERN))
    after: int = f(Int(0, MAX_TIME))
    entries: tuple[LogEntry, ...] = f(ListOf(Nested(LogEntry), LOG_PAGE_MAX))
    head: LogHead | None = f(Optional(Nested(LogHead)))
    credential: Credential | None = f(Optional(Nested(Credential)))

    def __post_init__(self) -> None:
        for i, e in enumerate(self.entries, start=1):
            if e.seq != self.after + i:
                raise ValueError("entries are not consecutive after the requested seq")
        if not (self.head is None) == (self.credential is None) == (not self.entries):
            raise ValueError("a head and a credential are sent with entries, and only with entries")
        if self.head is not None and (self.head.member != self.member or self.head.seq != self.after + len(self.entries)):
            raise ValueError("the head is not the member's head at the last entry")
        if self.credential is not None and self.credential.member_id != self.member:
            raise ValueError("the credential is another member's")
