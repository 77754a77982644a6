"""Fixtures shared by the store tests: one repository per implementation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from p2pd_test_helpers import PostgresServer

from store import ReceiptRecord, Repository, open_repository

IMPLS = ["memory", "sqlite-memory", "sqlite-file", "postgresql"]


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "postgresql":  # the server starts on first use (tests/conftest.py)
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.new_database()
    return {
        "memory": "memory://",
        "sqlite-memory": "sqlite://",
        "sqlite-file": f"sqlite:///{tmp_path / 'store.db'}",
    }[kind]


@pytest.fixture(params=IMPLS)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """A fresh repository of each implementation, closed afterwards."""
    r = open_repository(_url(request.param, request, tmp_path))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """URL of a not yet existing SQLite file."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite-file", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a new, empty database that several processes can open: a
    SQLite file, and a database on the test run's PostgreSQL server."""
    return _url(request.param, request, tmp_path)


MakeReceipt = Callable[..., ReceiptRecord]


@pytest.fixture
def make_receipt() -> MakeReceipt:
    """Factory: ``make_receipt(trade_id, order_id, wh, order_wh=10_000, **overrides)``."""

    def make(
        trade_id: bytes | str,
        order_id: bytes | str = b"order-1",
        wh: int = 1000,
        order_wh: int = 10_000,
        **overrides: object,
    ) -> ReceiptRecord:
        tid = trade_id.encode() if isinstance(trade_id, str) else trade_id
        fields: dict[str, object] = {
            "trade_id": tid,
            "order_id": order_id.encode() if isinstance(order_id, str) else order_id,
            "seller": "alice",
            "buyer": "bob",
            "slot_start": 1_800_000_000,
            "slot_len": 900,
            "wh": wh,
            "price": 25,
            "order_wh": order_wh,
            "encoded": b"signed:" + tid,
            "created_at": 1_799_999_000,
        }
        fields.update(overrides)
        return ReceiptRecord(**fields)  # type: ignore[arg-type]

    return make
