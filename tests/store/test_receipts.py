"""commit_receipts semantics, shared by every implementation."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from store import Committed, Duplicate, Insufficient, Outcome, ReceiptRecord, Repository

MakeReceipt = Callable[..., ReceiptRecord]


def test_commit_then_read_back(repo: Repository, make_receipt: MakeReceipt) -> None:
    r = make_receipt("t1", wh=600)
    assert repo.commit_receipts([r]) == [Committed(r)]
    assert repo.get_receipt(b"t1") == r
    assert repo.get_receipt(b"nope") is None
    assert repo.receipts_for_order(b"order-1") == [r]
    assert repo.remaining_wh(b"order-1", 10_000) == 9_400
    assert repo.commit_receipts([]) == []


def test_duplicate_commit_returns_stored_receipt(
    repo: Repository, make_receipt: MakeReceipt
) -> None:
    first = make_receipt("t1", wh=600)
    assert repo.commit_receipts([first]) == [Committed(first)]
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
    assert repo.commit_receipts([a]) == [Committed(a)]
    assert repo.commit_receipts([b]) == [Insufficient(remaining_wh=300)]
    assert repo.get_receipt(b"b") is None
    assert repo.commit_receipts([c]) == [Committed(c)]
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
        Committed(a1),
        Committed(b1),
        Duplicate(a1),
        Insufficient(remaining_wh=100),
        Committed(a2),
        Duplicate(pre),
        Insufficient(remaining_wh=0),
        Committed(b3),
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
