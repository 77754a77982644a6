"""Hash-chained receipt logs: heads, forks and equivocation proofs (sans-IO)."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import Community

from p2pd.market.receipt_log import HeadBook
from protocol import HEAD_DOMAIN, OBSOLETE_HEAD_DOMAIN, SignatureError, SigningKey, digest, pack
from protocol.receipt_log import EquivocationProof, ForkError, LogHead, ReceiptChain, verify_entries


def test_chain_reproduces_its_signed_head_and_catches_a_rewrite() -> None:
    key = SigningKey.generate()
    chain = ReceiptChain()
    for r in (b"r1", b"r2", b"r3"):
        chain.append(r)
    head = chain.head(key, "alice")
    assert head.seq == 3
    verify_entries(chain.entries, head, key.public)
    with pytest.raises(ForkError):
        verify_entries([b"r1", b"rX", b"r3"], head, key.public)  # history rewritten
    with pytest.raises(ForkError):
        verify_entries([b"r1"], head, key.public)
    with pytest.raises(SignatureError):
        verify_entries(chain.entries, head, SigningKey.generate().public)


def test_equivocation_proof_needs_two_signed_conflicting_heads() -> None:
    com = Community()
    alice = com.member("alice")
    a = LogHead.create(alice.signing, "alice", 5, b"a" * 32)
    b = LogHead.create(alice.signing, "alice", 5, b"b" * 32)
    EquivocationProof(a, b).check(alice.credential)
    assert EquivocationProof.decode(EquivocationProof(a, b).encode()) == EquivocationProof(a, b)
    with pytest.raises(ValueError):
        EquivocationProof(a, a).check(alice.credential)  # same hash: no conflict
    with pytest.raises(ValueError):
        EquivocationProof(a, LogHead.create(alice.signing, "alice", 6, b"b" * 32)).check(alice.credential)
    forged = LogHead("alice", 5, b"c" * 32, bytes(64))
    with pytest.raises(SignatureError):
        EquivocationProof(a, forged).check(alice.credential)


def test_log_entries_are_consecutive_and_end_at_the_members_head() -> None:
    from protocol import (
        DecodeError,
        LocalProtocolError,
        LogEntries,
        LogEntry,
        LogRequest,
        SealedEntry,
        decode_message,
        digest,
        encode_message,
    )
    from protocol.sealing import SEALED_MIN

    def entry(seq: int, receipt: bytes) -> LogEntry:
        return LogEntry(seq, SealedEntry(digest(receipt), bytes(SEALED_MIN)))

    alice = Community().member("alice")
    key, cred = alice.signing, alice.credential
    chain = ReceiptChain()
    for r in (b"r1", b"r2", b"r3"):
        chain.append(r)
    head = chain.head(key, "alice")
    page = LogEntries("alice", 1, (entry(2, b"r2"), entry(3, b"r3")), head, cred)
    assert decode_message(encode_message(page)) == page
    none = LogEntries("alice", 3, (), None, None)
    assert decode_message(encode_message(none)) == none
    assert decode_message(encode_message(LogRequest("alice", 0, 8))) == LogRequest("alice", 0, 8)
    wire = encode_message(page)
    for bad in (
        lambda: LogEntries("alice", 0, (entry(2, b"r2"), entry(3, b"r3")), head, cred),  # not after 0
        lambda: LogEntries("alice", 1, (entry(2, b"r2"), entry(4, b"r3")), head, cred),  # a gap
        lambda: LogEntries("alice", 1, (entry(2, b"r2"),), head, cred),  # head at 3, last entry 2
        lambda: LogEntries("bob", 1, (entry(2, b"r2"), entry(3, b"r3")), head, cred),  # other member
        lambda: LogEntries("alice", 1, (), head, cred),  # a head without entries
        lambda: LogEntries("alice", 1, (entry(2, b"r2"),), None, None),  # entries without a head
        lambda: LogEntries("alice", 1, (entry(2, b"r2"), entry(3, b"r3")), head, None),  # no credential
        lambda: LogEntries("alice", 2, (entry(3, b"r3"),), head, Community().member("bob").credential),
        lambda: LogRequest("alice", 0, 9),  # more than LOG_PAGE_MAX
    ):
        with pytest.raises((ValueError, DecodeError, LocalProtocolError)):
            bad().validate()
    assert wire == encode_message(page)


def _v1_head(key: SigningKey, member: str, seq: int, head_hash: bytes) -> LogHead:
    """A head as nodes before log-head/2 signed it (over the log-entry/1 chain)."""
    unsigned = LogHead(member, seq, head_hash, bytes(64))
    return LogHead(member, seq, head_hash, key.sign(OBSOLETE_HEAD_DOMAIN, unsigned.body()))


def test_a_v1_head_is_obsolete_never_a_fork_against_a_v2_head() -> None:
    com = Community()
    alice = com.member("alice")
    old_chain = [b"r1", b"r2"]
    h = bytes(32)
    for seq, r in enumerate(old_chain, start=1):  # the log-entry/1 chain: whole receipts
        h = digest(pack(["p2pd/log-entry/1", h, seq, r]))
    old = _v1_head(alice.signing, "alice", 2, h)
    chain = ReceiptChain()
    for r in old_chain:
        chain.append(r)
    new = chain.head(alice.signing, "alice")
    assert HEAD_DOMAIN == "p2pd/log-head/2" and new.head_hash != old.head_hash
    assert old.obsolete(alice.credential.sign_pk) and not new.obsolete(alice.credential.sign_pk)
    with pytest.raises(SignatureError):
        old.verify(alice.credential.sign_pk)
    # Same member, same seq, different hashes: no proof, as one head is of the old kind.
    with pytest.raises(SignatureError):
        EquivocationProof(old, new).check(alice.credential)
    with pytest.raises(SignatureError):
        EquivocationProof(new, old).check(alice.credential)
    book = HeadBook()
    assert book.add(new, alice.credential) is None
    with pytest.raises(SignatureError):
        book.add(old, alice.credential)
    assert not book.proofs and not book.accept_proof(EquivocationProof(new, old), alice.credential)
