"""A node's own hash-chained receipt log, and the heads it has seen from others.

:class:`ReceiptLog` appends every receipt this node signed and signs the new
head. :class:`HeadBook` keeps, per member, the signed heads and entry hashes
it has learnt (from ``HeadGossip`` and ``ReceiptReplica``) and turns a
conflict into proof: two heads with one seq and different hashes
(:class:`~protocol.receipt_log.EquivocationProof`), or a replica whose entry
does not lead from the member's previous signed head to its new one (a fork:
the two heads and the entry are the proof). Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import (
    Credential,
    EquivocationProof,
    LogHead,
    ReceiptChain,
    SignatureError,
    SigningKey,
    entry_hash,
)


class ReceiptLog:
    """This node's log. ``append`` returns the signed head after the entry."""

    def __init__(self, key: SigningKey, member: str) -> None:
        self.key = key
        self.member = member
        self.chain = ReceiptChain()
        self.heads: list[LogHead] = []
        self.seen: set[bytes] = set()

    def append(self, receipt: bytes) -> LogHead | None:
        """Append ``receipt`` once (None if already logged); returns the new signed head."""
        if receipt in self.seen:
            return None
        self.seen.add(receipt)
        self.chain.append(receipt)
        head = self.chain.head(self.key, self.member)
        self.heads.append(head)
        return head

    @property
    def head(self) -> LogHead:
        return self.heads[-1] if self.heads else self.chain.head(self.key, self.member)


@dataclass
class Fork:
    """A replica whose entry does not chain from the previous head to the new one."""

    member: str
    previous: LogHead
    head: LogHead
    receipt: bytes


@dataclass
class HeadBook:
    """Heads of other members: detects equivocation and forks."""

    heads: dict[str, dict[int, LogHead]] = field(default_factory=dict)
    proofs: dict[str, EquivocationProof] = field(default_factory=dict)
    forks: dict[str, Fork] = field(default_factory=dict)

    def add(self, head: LogHead, cred: Credential) -> EquivocationProof | None:
        """Record a head (signature checked). Returns a new proof if it conflicts.

        Raises SignatureError for a head not signed by ``cred``.
        """
        if head.member != cred.member_id:
            raise SignatureError("head names another member")
        head.verify(cred.sign_pk)
        known = self.heads.setdefault(head.member, {})
        other = known.get(head.seq)
        if other is None:
            known[head.seq] = head
            return None
        if other.head_hash == head.head_hash:
            return None
        if head.member in self.proofs:
            return None
        proof = EquivocationProof(other, head)
        self.proofs[head.member] = proof
        return proof

    def add_entry(self, receipt: bytes, head: LogHead, cred: Credential) -> Fork | EquivocationProof | None:
        """Record a replicated entry with the head that follows it; detect forks."""
        proof = self.add(head, cred)
        if proof is not None:
            return proof
        previous = self.heads.get(head.member, {}).get(head.seq - 1)
        if previous is None and head.seq == 1:
            previous = LogHead(head.member, 0, bytes(32), bytes(64))
        if previous is None:
            return None
        if entry_hash(previous.head_hash, head.seq, receipt) != head.head_hash and head.member not in self.forks:
            fork = Fork(head.member, previous, head, receipt)
            self.forks[head.member] = fork
            return fork
        return None

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
