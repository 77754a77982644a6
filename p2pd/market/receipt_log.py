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

from collections.abc import Iterable
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
