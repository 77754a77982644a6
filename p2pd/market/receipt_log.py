"""A node's own hash-chained receipt log, and the heads it has seen from others.

:class:`ReceiptLog` appends every receipt this node signed and signs the new
head. :class:`HeadBook` keeps, per member, the signed heads and entry hashes
it has learnt (from ``HeadGossip`` and ``ReceiptReplica``) and turns a
conflict into proof: two heads with one seq and different hashes
(:class:`~protocol.receipt_log.EquivocationProof`), or a replica whose entry
does not lead from the member's previous signed head to its new one (a fork:
the two heads and the entry's digest are the proof).

Others hold an entry as a :class:`~protocol.SealedEntry` (:func:`sealed_entry`):
the receipt's digest, which the chain runs over, and the receipt sealed to
the members who signed it. Everything here that checks another member's
log works on digests; only a party opens a box (:func:`open_entry`).

Following a log (:class:`Followed`): a node keeps how far it verified
another member's log, and :meth:`HeadBook.add_page` checks each page of
entries fetched for it (``LogEntries``): they must chain from what is
verified to a head the member signed. :func:`page_of` and
:meth:`ReceiptLog.page` build the pages a node answers with. Pure
bookkeeping, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from protocol import (
    RECEIPT_V1,
    RECEIPT_V2,
    AgentReceipt,
    Credential,
    EquivocationProof,
    LogHead,
    Receipt,
    ReceiptChain,
    SealedEntry,
    SealError,
    SignatureError,
    SigningKey,
    digest,
    entry_hash_of,
    open_receipt,
    seal_receipt,
)

GENESIS = bytes(32)


def receipt_kind(encoded: bytes) -> int:
    """RECEIPT_V1 or RECEIPT_V2 by shape (a v2 receipt has six fields)."""
    return RECEIPT_V2 if encoded[:1] == b"\x96" else RECEIPT_V1


def sealed_entry(receipt: bytes, credentials: Mapping[str, Credential],
                 random_bytes: Callable[[int], bytes]) -> tuple[SealedEntry, frozenset[str]]:
    """``receipt`` as others hold it, sealed to those of its signers whose credentials
    we know; returns the entry and whom it is sealed to. Raises DecodeError, and
    ValueError if we know none of them (we always know ourselves, a signer)."""
    to = sorted(m for m in signers(receipt) if m in credentials)
    box = seal_receipt(receipt, digest(receipt), [credentials[m].noise_pk for m in to], random_bytes)
    return SealedEntry(digest(receipt), box), frozenset(to)


def open_entry(entry: SealedEntry, noise_private: bytes) -> bytes | None:
    """The receipt in ``entry`` if it is sealed to our key and hashes to its digest, else None."""
    try:
        receipt = open_receipt(entry.sealed, entry.digest, noise_private)
    except SealError:
        return None
    return receipt if digest(receipt) == entry.digest else None


def signers(encoded: bytes) -> frozenset[str]:
    """The members who signed a receipt, and so logged it: seller and buyer (S1), or
    the two agents and the broker, if any (S2-S4). Raises DecodeError."""
    if receipt_kind(encoded) == RECEIPT_V1:
        t = Receipt.decode(encoded).terms
        return frozenset((t.seller, t.buyer))
    a = AgentReceipt.decode(encoded).terms
    return frozenset(m for m in (a.seller_agent, a.buyer_agent, a.broker) if m)


class ReceiptLog:
    """This node's log, in the order the store assigned (``Committed.seq``).

    Rule: an entry enters the log only with the seq the store gave it in the
    transaction that committed the receipt, so the log holds only what was
    committed, and entry ``seq`` is the same receipt after any restart
    (:meth:`restore` from the store). Heads are deterministic Ed25519
    signatures over (member, seq, hash), so re-signing the head of a seq
    after a crash gives the same bytes: the node never signs two different
    heads for one seq.
    """

    def __init__(self, key: SigningKey, member: str) -> None:
        self.key = key
        self.member = member
        self.chain = ReceiptChain()
        self._head: LogHead | None = None
        self._waiting: dict[int, bytes] = {}  # committed out of order: until the gap fills

    def restore(self, entries: Iterable[tuple[int, bytes]]) -> None:
        """Rebuild from the store's entries (``(seq, receipt)`` from seq 1, in order)."""
        for seq, receipt in entries:
            self.add(seq, receipt)

    def add(self, seq: int, receipt: bytes) -> list[tuple[bytes, LogHead]]:
        """Entry ``seq`` was committed. Returns ``(receipt, head)`` for each entry now in
        the log, in order: this one and any that waited for it; none if ``seq``
        is known or an earlier one is still missing.
        """
        if seq <= self.chain.seq:
            return []
        self._waiting[seq] = receipt
        added = []
        while self.chain.seq + 1 in self._waiting:
            entry = self._waiting.pop(self.chain.seq + 1)
            self.chain.append(entry)
            added.append(entry)
        if not added:
            return []
        # Each entry's head goes with its replica (p2pd/roles/replication.py).
        out = []
        first = self.chain.seq - len(added) + 1
        for i, entry in enumerate(added):
            seq_i = first + i
            out.append((entry, LogHead.create(self.key, self.member, seq_i, self.chain.hashes[seq_i])))
        self._head = out[-1][1]
        return out

    @property
    def head(self) -> LogHead:
        if self._head is None:
            self._head = self.chain.head(self.key, self.member)
        return self._head

    @property
    def started(self) -> bool:
        return self.chain.seq > 0

    def page(self, after: int, limit: int) -> tuple[list[tuple[int, bytes]], LogHead | None]:
        """Entries ``after + 1`` … (at most ``limit``) and our head at the last; ``([], None)``
        if there are none. Re-signing an old seq gives the head signed then (deterministic)."""
        entries = self.chain.entries[after : after + limit]
        if after < 0 or not entries:
            return [], None
        last = after + len(entries)
        head = LogHead.create(self.key, self.member, last, self.chain.hashes[last])
        return [(after + i, e) for i, e in enumerate(entries, start=1)], head


def page_of(held: Iterable[tuple[int, bytes, LogHead]], after: int, limit: int,
            ) -> tuple[list[tuple[int, bytes]], LogHead | None]:
    """A page from entries held for another member: ``(seq, entry, head)`` by seq
    (``entry`` as held: a SealedEntry's encoding).

    Returns the longest run of consecutive entries from ``after + 1`` (at most
    ``limit``) that ends at an entry held with the member's head at its own
    seq, and that head; ``([], None)`` if there is none.
    """
    run: list[tuple[int, bytes]] = []
    end: tuple[int, LogHead] | None = None
    for seq, receipt, head in held:
        if len(run) >= limit or seq != after + len(run) + 1:
            break
        run.append((seq, receipt))
        if head.seq == seq:
            end = (len(run), head)
    if end is None:
        return [], None
    return run[: end[0]], end[1]


@dataclass
class Followed:
    """How far this node verified a log it follows: entries 1..``seq`` reproduce ``head_hash``."""

    member: str
    seq: int = 0
    head_hash: bytes = GENESIS


@dataclass(frozen=True)
class PageVerified:
    """A page that extends a followed log: store ``entries``; ``followed`` is the new state."""

    followed: Followed
    entries: tuple[tuple[int, bytes], ...]
    head: LogHead


@dataclass(frozen=True)
class PageRejected:
    """An answer that proves nothing about the member: its sender's fault, not the member's."""

    why: str


@dataclass
class Fork:
    """Entries the member showed that do not chain from ``previous`` to ``head``.

    A replica (its receipt's digest ``receipt``) not leading from the member's head at ``seq - 1`` to
    the one sent with it; or a fetched page (``entries``, from ``previous.seq +
    1``) that reproduces one head the member signed but not another
    (``previous`` is then the contradicted head), or that the member itself
    sent and that does not reproduce its own head.
    """

    member: str
    previous: LogHead
    head: LogHead
    receipt: bytes
    """The digest of the entry that breaks the chain."""
    entries: tuple[bytes, ...] = ()
    """The page's digests."""


@dataclass
class HeadBook:
    """Heads of other members: detects equivocation and forks."""

    heads: dict[str, dict[int, LogHead]] = field(default_factory=dict)
    proofs: dict[str, EquivocationProof] = field(default_factory=dict)
    forks: dict[str, Fork] = field(default_factory=dict)
    obsolete: int = 0
    """Held heads found not to verify when they would have counted (and forgotten)."""

    def add(self, head: LogHead, cred: Credential) -> EquivocationProof | None:
        """Record a head (signature checked). Returns a new proof if it conflicts.

        Raises SignatureError for a head not signed by ``cred``.
        """
        if head.member != cred.member_id:
            raise SignatureError("head names another member")
        head.verify(cred.sign_pk)
        known = self.heads.setdefault(head.member, {})
        other = known.get(head.seq)
        if other is None or not self._still_valid(other, cred):
            known[head.seq] = head
            return None
        if other.head_hash == head.head_hash:
            return None
        if head.member in self.proofs:
            return None
        proof = EquivocationProof(other, head)
        self.proofs[head.member] = proof
        return proof

    def add_entry(self, receipt_digest: bytes, head: LogHead, cred: Credential) -> Fork | EquivocationProof | None:
        """Record a replicated entry (its receipt's digest) with the head that follows it; detect forks."""
        proof = self.add(head, cred)
        if proof is not None:
            return proof
        previous = self.heads.get(head.member, {}).get(head.seq - 1)
        if previous is None and head.seq == 1:
            previous = LogHead(head.member, 0, bytes(32), bytes(64))
        elif previous is not None and not self._still_valid(previous, cred):
            previous = None
        if previous is None:
            return None
        if (entry_hash_of(previous.head_hash, head.seq, receipt_digest) != head.head_hash
                and head.member not in self.forks):
            fork = Fork(head.member, previous, head, receipt_digest)
            self.forks[head.member] = fork
            return fork
        return None

    def _still_valid(self, held: LogHead, cred: Credential) -> bool:
        """True if a head we hold verifies now; else forget it.

        Held heads were checked when learnt, or restored from the store
        unchecked. Before one becomes half of a proof or a fork it is checked
        again: a head kept from before the upgrade to ``p2pd/log-head/2`` is
        about another chain (docs/protocol.md 15, "Upgrading from
        log-entry/1") and must never count against a current one.
        """
        try:
            held.verify(cred.sign_pk)
        except SignatureError:
            known = self.heads.get(held.member, {})
            if known.get(held.seq) is held:
                del known[held.seq]
            self.obsolete += 1
            return False
        return True

    def restore(self, head: LogHead) -> None:
        """Put back a head kept in the store (checked when it was first learnt).

        A second head at one seq with another hash becomes the proof again.
        """
        known = self.heads.setdefault(head.member, {})
        other = known.get(head.seq)
        if other is None:
            known[head.seq] = head
        elif other.head_hash != head.head_hash and head.member not in self.proofs:
            self.proofs[head.member] = EquivocationProof(other, head)

    def latest(self, member: str) -> int:
        """The highest seq of ``member``'s heads known (0 if none)."""
        return max(self.heads.get(member, {}), default=0)

    def has(self, head: LogHead) -> bool:
        """True if exactly this head (seq and hash) is known."""
        known = self.heads.get(head.member, {}).get(head.seq)
        return known is not None and known.head_hash == head.head_hash

    def add_page(self, followed: Followed, entries: Sequence[tuple[int, bytes]], head: LogHead,
                 cred: Credential, *, from_member: bool) -> PageVerified | PageRejected | Fork | EquivocationProof:
        """Check a page of ``followed.member``'s log fetched for us: ``entries`` are
        ``(seq, receipt digest)``.

        The entries must be consecutive from ``followed.seq + 1`` and, chained
        from ``followed.head_hash``, reproduce ``head``, which ``cred`` (the
        member's credential) signed. A mismatch is the member's fork if the
        member sent the page itself (``from_member``), else the sender's fault
        (:class:`PageRejected`: someone else may hold the real entries). Entries
        that reproduce the signed head but pass another head the member signed
        at a lower seq with a different hash are a fork whoever sent them: the
        member signed two histories. A head conflicting with a known one at its
        seq is an equivocation. Nothing is changed but the heads known.
        """
        member = followed.member
        if head.member != member or cred.member_id != member:
            return PageRejected("head or credential of another member")
        if not entries or [s for s, _ in entries] != list(range(followed.seq + 1, followed.seq + 1 + len(entries))):
            return PageRejected("entries are not the ones after the verified seq")
        if head.seq != entries[-1][0]:
            return PageRejected("head is not at the last entry")
        try:
            proof = self.add(head, cred)
        except SignatureError:
            return PageRejected("head not signed by the member")
        if proof is not None:
            return proof
        known = self.heads.get(member, {})
        previous = known.get(followed.seq) or LogHead(member, followed.seq, followed.head_hash, bytes(64))
        receipts = tuple(r for _, r in entries)
        h = followed.head_hash
        hashes = []
        for seq, receipt_digest in entries:
            h = entry_hash_of(h, seq, receipt_digest)
            hashes.append((seq, h))
        if h != head.head_hash:
            if not from_member:
                return PageRejected("entries do not reproduce the member's head")
            return self._fork(Fork(member, previous, head, receipts[-1], receipts))
        for seq, h in hashes[:-1]:
            other = known.get(seq)
            if other is not None and other.head_hash != h and self._still_valid(other, cred):
                return self._fork(Fork(member, other, head, receipts[seq - followed.seq - 1], receipts))
        return PageVerified(Followed(member, head.seq, head.head_hash), tuple(entries), head)

    def _fork(self, fork: Fork) -> Fork:
        self.forks.setdefault(fork.member, fork)
        return fork

    def accept_proof(self, proof: EquivocationProof, cred: Credential) -> bool:
        """Check a proof someone sent us; True if valid and new."""
        try:
            proof.check(cred)
        except (ValueError, SignatureError):
            return False
        if cred.member_id in self.proofs:
            return False
        self.proofs[cred.member_id] = proof
        return True
