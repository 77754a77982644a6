"""commit_receipts semantics, shared by every implementation."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from store import Committed, Duplicate, Insufficient, Outcome, ReceiptRecord, Repository

MakeReceipt = Callable[..., ReceiptRecord]


def test_commit_then_read_back(repo: Repository, make_receipt: MakeReceipt) -> None:
    r = make_receipt("t1", wh=600)
    assert repo.commit_receipts([r]) == [Committed(r, seq=1)]
    assert repo.get_receipt(b"t1") == r
    assert repo.get_receipt(b"nope") is None
    assert repo.receipts_for_order(b"order-1") == [r]
    assert repo.remaining_wh(b"order-1", 10_000) == 9_400
    assert repo.commit_receipts([]) == []


def test_duplicate_commit_returns_stored_receipt(
    repo: Repository, make_receipt: MakeReceipt
) -> None:
    first = make_receipt("t1", wh=600)
    assert repo.commit_receipts([first]) == [Committed(first, seq=1)]
    # A retry with the same trade_id but different content must not overwrite
    # or double-count: the caller gets back what is stored.
    retry = make_receipt("t1", wh=700, encoded=b"other bytes")
    assert repo.commit_receipts([retry]) == [Duplicate(first)]
    assert repo.commit_receipts([first]) == [Duplicate(first)]
    assert repo.receipts_for_order(b"order-1") == [first]
    assert repo.remaining_wh(b"order-1", 10_000) == 9_400


def test_insufficient_carries_remaining(repo: Repository, make_receipt: MakeReceipt) -> None:
    a = make_receipt("a", wh=700, order_wh=1000)
    b = make_receipt("b", wh=301, order_wh=1000)
    c = make_receipt("c", wh=300, order_wh=1000)
    assert repo.commit_receipts([a]) == [Committed(a, seq=1)]
    assert repo.commit_receipts([b]) == [Insufficient(remaining_wh=300)]
    assert repo.get_receipt(b"b") is None
    assert repo.commit_receipts([c]) == [Committed(c, seq=2)]
    assert repo.commit_receipts([make_receipt("d", wh=1, order_wh=1000)]) == [
        Insufficient(remaining_wh=0)
    ]
    assert repo.remaining_wh(b"order-1", 1000) == 0


def test_batch_with_several_orders_and_inner_duplicate(
    repo: Repository, make_receipt: MakeReceipt
) -> None:
    pre = make_receipt("pre", order_id="B", wh=400, order_wh=1000)
    repo.commit_receipts([pre])
    batch = [
        a1 := make_receipt("a1", order_id="A", wh=500, order_wh=1000),
        b1 := make_receipt("b1", order_id="B", wh=500, order_wh=1000),
        make_receipt("a1", order_id="A", wh=500, order_wh=1000),  # repeat of a1
        make_receipt("b2", order_id="B", wh=200, order_wh=1000),  # B has 100 left
        a2 := make_receipt("a2", order_id="A", wh=500, order_wh=1000),
        make_receipt("pre", order_id="B", wh=1, order_wh=1000),  # stored before
        make_receipt("a3", order_id="A", wh=1, order_wh=1000),  # A is full
        b3 := make_receipt("b3", order_id="B", wh=100, order_wh=1000),
    ]
    expected: list[Outcome] = [
        Committed(a1, seq=2),
        Committed(b1, seq=3),
        Duplicate(a1),
        Insufficient(remaining_wh=100),
        Committed(a2, seq=4),
        Duplicate(pre),
        Insufficient(remaining_wh=0),
        Committed(b3, seq=5),
    ]
    assert repo.commit_receipts(batch) == expected
    assert sum(r.wh for r in repo.receipts_for_order(b"A")) == 1000
    assert sum(r.wh for r in repo.receipts_for_order(b"B")) == 1000
    assert {r.trade_id for r in repo.receipts()} == {b"pre", b"a1", b"b1", b"a2", b"b3"}


def test_invalid_receipt_rejects_whole_batch(repo: Repository, make_receipt: MakeReceipt) -> None:
    good = make_receipt("good", wh=10)
    for bad in (
        make_receipt("bad", wh=0),
        make_receipt("neg", wh=-500),
        make_receipt("bad2", wh=1, order_wh=-1),
    ):
        with pytest.raises(ValueError):
            repo.commit_receipts([good, bad])
    assert repo.receipts() == []


def test_two_racers_for_the_last_kwh_exactly_one_wins(
    repo: Repository, make_receipt: MakeReceipt
) -> None:
    for round_ in range(5):
        oid = f"order-{round_}"
        repo.commit_receipts([make_receipt(f"base-{round_}", order_id=oid, wh=9000)])
        barrier = threading.Barrier(2)
        results: dict[int, list[Outcome]] = {}

        def racer(
            r: ReceiptRecord,
            i: int,
            barrier: threading.Barrier = barrier,
            results: dict[int, list[Outcome]] = results,
        ) -> None:
            barrier.wait()
            results[i] = repo.commit_receipts([r])

        threads = [
            threading.Thread(
                target=racer,
                args=(make_receipt(f"race-{round_}-{i}", order_id=oid, wh=1000), i),
            )
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outs = [results[0][0], results[1][0]]
        assert sum(isinstance(o, Committed) for o in outs) == 1
        assert Insufficient(remaining_wh=0) in outs
        assert sum(r.wh for r in repo.receipts_for_order(oid.encode())) == 10_000


def test_receipt_queries(repo: Repository, make_receipt: MakeReceipt) -> None:
    r1 = make_receipt("r1", seller="alice", buyer="bob", created_at=100)
    r2 = make_receipt("r2", order_id="o2", seller="carol", buyer="alice", created_at=200)
    r3 = make_receipt("r3", order_id="o3", seller="carol", buyer="dave", created_at=150)
    repo.commit_receipts([r2, r1, r3])
    assert repo.receipts() == [r1, r3, r2]
    assert repo.receipts(member_id="alice") == [r1, r2]
    assert repo.receipts(member_id="dave") == [r3]
    assert repo.receipts(since=150) == [r3, r2]
    assert repo.receipts(member_id="alice", since=150) == [r2]
    assert repo.receipts(member_id="nobody") == []
    assert repo.receipts_for_order(b"o2") == [r2]


def test_the_log_order_is_assigned_with_the_commit_and_has_no_gaps(
        repo: Repository, make_receipt: MakeReceipt) -> None:
    # Only receipts stored now get a seq: duplicates and refusals never do.
    a, b = make_receipt("a", wh=600, order_wh=1000), make_receipt("b", wh=600, order_wh=1000)
    c = make_receipt("c", order_id="other", wh=5)
    assert [type(o).__name__ for o in repo.commit_receipts([a, b, a])] == [
        "Committed", "Insufficient", "Duplicate"]
    assert repo.commit_receipts([c]) == [Committed(c, seq=2)]
    assert repo.log_entries() == [(1, a.encoded), (2, c.encoded)]
    assert repo.log_entries(after=1) == [(2, c.encoded)]
    assert repo.log_entries(after=0, limit=1) == [(1, a.encoded)]


def test_pending_takes_and_replicas_round_trip(repo: Repository) -> None:
    from store import PendingTakeRecord, ReplicaRecord

    t1 = PendingTakeRecord(b"t1", "alice", b"terms", b"sig", 10)
    t0 = PendingTakeRecord(b"t0", "bob", b"terms0", b"sig0", 5)
    assert repo.put_pending_take(t1) and repo.put_pending_take(t0)
    assert not repo.put_pending_take(PendingTakeRecord(b"t1", "x", b"other", b"s", 1))
    assert repo.pending_takes() == [t0, t1]
    assert repo.delete_pending_take(b"t0") and not repo.delete_pending_take(b"t0")
    assert repo.pending_takes() == [t1]
    r1, r2 = ReplicaRecord("carol", 1, b"e1", b"h1"), ReplicaRecord("carol", 2, b"e2", b"h2")
    assert repo.put_replica(r2) and repo.put_replica(r1) and not repo.put_replica(r1)
    assert repo.put_replica(ReplicaRecord("dave", 1, b"d", b"h"))
    assert repo.replicas("carol") == [r1, r2] and repo.replicas("carol", after=1) == [r2]
    assert repo.replica_count() == 3


def test_replica_batches_heads_and_follows_survive_in_the_store(repo: Repository) -> None:
    # Schema 3: fetched pages are held in one transaction, heads learnt from
    # others (both of a conflicting pair) and the followed logs are kept.
    from store import FollowRecord, HeadRecord, ReplicaRecord

    page = [ReplicaRecord("carol", s, b"e%d" % s, b"h3") for s in (1, 2, 3)]
    assert repo.put_replica(page[1])
    assert repo.put_replicas(page) == 2 and repo.put_replicas(page) == 0
    assert repo.replicas("carol", after=0, limit=2) == page[:2] and repo.replica_count() == 3
    a, b = HeadRecord("carol", 3, b"A" * 32, b"s" * 64), HeadRecord("carol", 3, b"B" * 32, b"t" * 64)
    d = HeadRecord("dave", 1, b"D" * 32, b"u" * 64)
    assert repo.put_head(b) and repo.put_head(d) and repo.put_head(a)
    assert not repo.put_head(HeadRecord("carol", 3, b"A" * 32, b"x" * 64))
    assert repo.heads() == [a, b, d] and repo.heads("carol") == [a, b] and repo.heads("erin") == []
    repo.put_follow(FollowRecord("dave", 0, bytes(32)))
    repo.put_follow(FollowRecord("carol", 2, b"C" * 32))
    repo.put_follow(FollowRecord("dave", 1, b"D" * 32))
    assert repo.follows() == [FollowRecord("carol", 2, b"C" * 32), FollowRecord("dave", 1, b"D" * 32)]
