"""A store whose storage refuses writes (issue 12, point 4): StorageUnavailable, then recovery.

A full disk cannot be made without root mounts, so SQLite's own limit stands
in for it: ``PRAGMA max_page_count`` (``SqlRepository.limit_pages_for_tests``)
makes SQLite answer SQLITE_FULL exactly as it does when the disk is full.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc

from store import (
    Committed,
    Duplicate,
    ReadingRecord,
    ReceiptRecord,
    SqlRepository,
    StorageUnavailable,
    StoreError,
    open_repository,
)
from store._sql_support import translate_errors

MakeReceipt = Callable[..., ReceiptRecord]

ORDER_WH = 10_000_000


def fill(repo: SqlRepository, make_receipt: MakeReceipt) -> int:
    """Commit one receipt at a time until the storage refuses one; returns how many went in."""
    for i in range(100_000):  # bounded: a page holds a few dozen receipts
        try:
            repo.commit_receipts([make_receipt(f"t{i}", wh=1, order_wh=ORDER_WH)])
        except StorageUnavailable:
            return i
    raise AssertionError("the page cap never filled")


@pytest.mark.parametrize("kind", ["sqlite-file", "sqlite-memory"])
def test_full_storage_refuses_then_resumes(kind: str, tmp_path: Path, make_receipt: MakeReceipt) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite-file" else "sqlite://"
    repo = open_repository(url)
    assert isinstance(repo, SqlRepository)
    seen: list[StorageUnavailable | None] = []
    repo.on_write = seen.append
    try:
        repo.limit_pages_for_tests(0)  # full at its current size
        stored = fill(repo, make_receipt)
        assert seen[-1] is not None and "full" in str(seen[-1])
        assert isinstance(seen[-1].__cause__, sa_exc.OperationalError)
        assert seen[:-1] == [None] * stored
        # Nothing of the refused batch is there; the rest is intact.
        assert len(repo.receipts_for_order(b"order-1")) == stored
        assert repo.get_receipt(f"t{stored}".encode()) is None
        with pytest.raises(StorageUnavailable):  # and again: it stays full
            repo.commit_receipts([make_receipt(f"t{stored}", wh=1, order_wh=ORDER_WH)])
        # Reads go on while writes are refused; a write that changes nothing
        # (a duplicate) says nothing about the storage.
        before = len(seen)
        assert isinstance(repo.commit_receipts([make_receipt("t0", wh=1, order_wh=ORDER_WH)])[0], Duplicate)
        assert len(seen) == before

        repo.limit_pages_for_tests(None)  # space returns
        out = repo.commit_receipts([make_receipt(f"t{stored}", wh=1, order_wh=ORDER_WH)])
        assert isinstance(out[0], Committed) and seen[-1] is None
        assert len(repo.receipts_for_order(b"order-1")) == stored + 1
        assert repo.integrity_check() == "ok"
    finally:
        repo.close()


def test_read_only_database_is_storage_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    open_repository(f"sqlite:///{path}").close()
    # SQLite opened read-only answers writes with SQLITE_READONLY.
    repo = SqlRepository(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with pytest.raises(StorageUnavailable, match="readonly"):
            repo.add_readings([ReadingRecord("m", 1, 1, 1, 1)])
        assert repo.readings("m", 0, 10) == []
    finally:
        repo.close()


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("orig", "unavailable"), [
    (_PgError("53100"), True),  # PostgreSQL disk_full
    (_PgError("58030"), True),  # io_error
    (_PgError("40001"), False),  # serialization failure: not the storage
    (sqlite3.OperationalError("database is locked"), False),
    (sqlite3.OperationalError("disk I/O error"), True),  # no code: the message decides
])
def test_driver_errors_are_classified(orig: Exception, unavailable: bool) -> None:
    with pytest.raises(StoreError) as info, translate_errors():
        raise sa_exc.OperationalError("COMMIT", {}, orig)
    assert isinstance(info.value, StorageUnavailable) is unavailable
    assert info.value.__cause__ is not None and info.value.__cause__.orig is orig  # type: ignore[attr-defined]
