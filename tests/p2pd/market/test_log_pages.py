"""Following another member's receipt log: pages of entries checked against its signed heads (sans-IO)."""

from __future__ import annotations

from p2pd_test_helpers import Community

from p2pd.market.receipt_log import (
    Followed,
    Fork,
    HeadBook,
    PageRejected,
    PageVerified,
    ReceiptLog,
    page_of,
)
from protocol import (
    OBSOLETE_HEAD_DOMAIN,
    Credential,
    EquivocationProof,
    LogHead,
    ReceiptChain,
    SigningKey,
    digest,
)

RECEIPTS = [b"receipt %d" % i for i in range(1, 11)]


def digests(entries: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Entries as a page carries them to be checked: (seq, the receipt's digest)."""
    return [(s, digest(r)) for s, r in entries]


def alice_log(com: Community) -> tuple[ReceiptLog, Credential]:
    alice = com.member("alice")
    log = ReceiptLog(alice.signing, "alice")
    log.restore(enumerate(RECEIPTS, start=1))
    return log, alice.credential


def test_the_member_pages_its_own_log_with_the_heads_it_signed_then() -> None:
    com = Community()
    log, _ = alice_log(com)
    heads = [h for _, h in ReceiptLog(log.key, "alice").add(1, RECEIPTS[0])]
    entries, head = log.page(0, 1)
    assert entries == [(1, RECEIPTS[0])] and head == heads[0]  # deterministic: the same bytes
    entries, head = log.page(7, 8)
    assert [s for s, _ in entries] == [8, 9, 10] and head is not None and head.seq == 10
    assert head == log.head
    assert log.page(10, 8) == ([], None)


def test_a_holder_pages_consecutive_entries_ending_at_a_head_it_holds() -> None:
    com = Community()
    log, _ = alice_log(com)
    h = {s: LogHead.create(log.key, "alice", s, log.chain.hashes[s]) for s in range(1, 11)}
    # 1-3 fetched as one page (stored with the head at 3), 4 received with its own head, 6 alone.
    held = [(1, RECEIPTS[0], h[3]), (2, RECEIPTS[1], h[3]), (3, RECEIPTS[2], h[3]), (4, RECEIPTS[3], h[4]),
            (6, RECEIPTS[5], h[6])]
    assert page_of(held, 0, 8) == ([(s, RECEIPTS[s - 1]) for s in (1, 2, 3, 4)], h[4])
    assert page_of(held, 0, 2) == ([], None)  # no head within two entries
    assert page_of(held[3:], 3, 8) == ([(4, RECEIPTS[3])], h[4])
    assert page_of(held[4:], 4, 8) == ([], None)  # 5 is missing
    assert page_of([(2, RECEIPTS[1], h[3]), (3, RECEIPTS[2], h[3])], 1, 8) == ([(2, RECEIPTS[1]), (3, RECEIPTS[2])],
                                                                              h[3])


def test_pages_that_chain_to_a_signed_head_extend_what_is_verified() -> None:
    com = Community()
    log, cred = alice_log(com)
    book = HeadBook()
    followed = Followed("alice")
    for after in (0, 8):
        entries, head = log.page(after, 8)
        assert head is not None
        entries = digests(entries)
        got = book.add_page(followed, entries, head, cred, from_member=False)
        assert isinstance(got, PageVerified) and got.entries == tuple(entries)
        followed = got.followed
    assert (followed.seq, followed.head_hash) == (10, log.chain.head_hash)
    assert book.latest("alice") == 10 and book.has(log.head)


def test_a_bad_page_from_a_holder_is_its_fault_from_the_member_a_fork() -> None:
    com = Community()
    log, cred = alice_log(com)
    entries, head = log.page(0, 3)
    assert head is not None
    entries = digests(entries)
    forged = [entries[0], (2, digest(b"not what alice logged")), entries[2]]
    book = HeadBook()
    got = book.add_page(Followed("alice"), forged, head, cred, from_member=False)
    assert isinstance(got, PageRejected) and not book.forks
    got = book.add_page(Followed("alice"), forged, head, cred, from_member=True)
    assert isinstance(got, Fork) and book.forks["alice"] is got and got.entries[1] == digest(b"not what alice logged")
    # Wrong start, a head not at the last entry, a head signed by someone else: rejected.
    other = com.member("mallory")
    for args in ((Followed("alice", 1, log.chain.hashes[1]), entries, head),
                 (Followed("alice"), entries[:2], head),
                 (Followed("alice"), entries, LogHead.create(other.signing, "alice", 3, head.head_hash))):
        assert isinstance(HeadBook().add_page(*args, cred, from_member=True), PageRejected)


def test_a_page_contradicting_another_signed_head_is_a_fork_whoever_sent_it() -> None:
    # alice signs seq 2 of one history, then pages of another history up to 3:
    # two histories under her key, provable with the page and both heads.
    com = Community()
    alice = com.member("alice")
    one, two = ReceiptChain(), ReceiptChain()
    for r in (b"a", b"b"):
        one.append(r)
    for r in (b"a", b"B", b"c"):
        two.append(r)
    book = HeadBook()
    assert book.add(one.head(alice.signing, "alice"), alice.credential) is None
    entries = digests([(1, b"a"), (2, b"B"), (3, b"c")])
    got = book.add_page(Followed("alice"), entries, two.head(alice.signing, "alice"), alice.credential,
                        from_member=False)
    assert isinstance(got, Fork) and got.previous.seq == 2 and got.receipt == digest(b"B")
    # The same seq with two hashes is plain equivocation.
    got2 = HeadBook()
    got2.add(two.head(alice.signing, "alice"), alice.credential)
    three = ReceiptChain()
    for r in (b"x", b"y", b"z"):
        three.append(r)
    proof = got2.add_page(Followed("alice"), digests([(1, b"x"), (2, b"y"), (3, b"z")]),
                          three.head(alice.signing, "alice"), alice.credential, from_member=True)
    assert isinstance(proof, EquivocationProof)


def test_heads_restored_from_the_store_rebuild_the_proof() -> None:
    com = Community()
    alice = com.member("alice")
    a = LogHead.create(alice.signing, "alice", 4, b"a" * 32)
    b = LogHead.create(alice.signing, "alice", 4, b"b" * 32)
    book = HeadBook()
    book.restore(a)
    book.restore(a)
    assert not book.proofs and book.latest("alice") == 4
    book.restore(b)
    assert book.proofs["alice"] == EquivocationProof(a, b)
    assert HeadBook().latest("nobody") == 0


def _obsolete(head: LogHead, key: SigningKey, head_hash: bytes) -> LogHead:
    """A head for ``head``'s seq as signed before log-head/2 (over the old chain)."""
    unsigned = LogHead(head.member, head.seq, head_hash, bytes(64))
    return LogHead(head.member, head.seq, head_hash, key.sign(OBSOLETE_HEAD_DOMAIN, unsigned.body()))


def test_heads_kept_from_before_log_head_2_never_count_against_current_ones() -> None:
    # Restored heads are not checked again on restore; one signed as log-head/1
    # (another chain, another hash for the seq) must not become half of a proof
    # or the previous head of a fork: it is checked when it would, and forgotten.
    com = Community()
    log, cred = alice_log(com)
    key = log.key
    current: dict[int, LogHead] = {}
    for seq in (1, 2, 3):
        head = log.page(seq - 1, 1)[1]
        assert head is not None
        current[seq] = head
    old = {seq: _obsolete(h, key, bytes([seq]) * 32) for seq, h in current.items()}
    # A head of the same seq (HeadGossip).
    book = HeadBook()
    book.restore(old[2])
    assert book.add(current[2], cred) is None
    assert book.heads["alice"] == {2: current[2]} and not book.proofs and book.obsolete == 1
    # The head before a replica's (ReceiptReplica).
    book = HeadBook()
    book.restore(old[1])
    assert book.add_entry(digest(RECEIPTS[1]), current[2], cred) is None
    assert not book.forks and 1 not in book.heads["alice"] and book.obsolete == 1
    # A head passed by a fetched page (LogEntries), from the member itself.
    book = HeadBook()
    book.restore(old[1])
    found = book.add_page(Followed("alice"), digests(log.page(0, 3)[0]), current[3], cred, from_member=True)
    assert isinstance(found, PageVerified) and not book.forks and book.obsolete == 1
    # A real conflict is still one.
    book = HeadBook()
    book.restore(LogHead.create(key, "alice", 2, b"x" * 32))
    assert isinstance(book.add(current[2], cred), EquivocationProof)
