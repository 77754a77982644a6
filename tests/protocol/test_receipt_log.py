"""Hash-chained receipt logs: heads, forks and equivocation proofs (sans-IO)."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import Community

from protocol import SignatureError, SigningKey
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
        decode_message,
        encode_message,
    )

    alice = Community().member("alice")
    key, cred = alice.signing, alice.credential
    chain = ReceiptChain()
    for r in (b"r1", b"r2", b"r3"):
        chain.append(r)
    head = chain.head(key, "alice")
    page = LogEntries("alice", 1, (LogEntry(2, 1, b"r2"), LogEntry(3, 2, b"r3")), head, cred)
    assert decode_message(encode_message(page)) == page
    none = LogEntries("alice", 3, (), None, None)
    assert decode_message(encode_message(none)) == none
    assert decode_message(encode_message(LogRequest("alice", 0, 8))) == LogRequest("alice", 0, 8)
    wire = encode_message(page)
    for bad in (
        lambda: LogEntries("alice", 0, (LogEntry(2, 1, b"r2"), LogEntry(3, 2, b"r3")), head, cred),  # not after 0
        lambda: LogEntries("alice", 1, (LogEntry(2, 1, b"r2"), LogEntry(4, 2, b"r3")), head, cred),  # a gap
        lambda: LogEntries("alice", 1, (LogEntry(2, 1, b"r2"),), head, cred),  # head at 3, last entry 2
        lambda: LogEntries("bob", 1, (LogEntry(2, 1, b"r2"), LogEntry(3, 2, b"r3")), head, cred),  # other member
        lambda: LogEntries("alice", 1, (), head, cred),  # a head without entries
        lambda: LogEntries("alice", 1, (LogEntry(2, 1, b"r2"),), None, None),  # entries without a head
        lambda: LogEntries("alice", 1, (LogEntry(2, 1, b"r2"), LogEntry(3, 2, b"r3")), head, None),  # no credential
        lambda: LogEntries("alice", 2, (LogEntry(3, 2, b"r3"),), head, Community().member("bob").credential),
        lambda: LogRequest("alice", 0, 9),  # more than LOG_PAGE_MAX
    ):
        with pytest.raises((ValueError, DecodeError, LocalProtocolError)):
            bad().validate()
    assert wire == encode_message(page)
