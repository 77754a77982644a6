"""SQL helpers for :mod:`store.sql`: SQLite connection setup, error
translation and row-to-record conversion. Private to the store package."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, event, exc

from store.errors import IntegrityFailure, StorageUnavailable, StoreError
from store.records import MemberRecord, OrderRecord, ReceiptRecord, StatementRecord

# Execution option read by the SQLite "begin" hook to pick the BEGIN mode.
BEGIN_OPTION = "p2pd_sqlite_begin"
# SQLite's default limit on bound parameters is 32766; stay far below it.
IN_CHUNK = 500


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def install_sqlite_hooks(engine: Engine, busy_timeout_ms: int, on_disk: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own deferred BEGIN (and committing
        # before DDL); the "begin" hook below emits BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if on_disk:
                mode = _switch_to_wal(cur, time.monotonic() + busy_timeout_ms / 1000)
                if str(mode).lower() != "wal":
                    raise StoreError(f"could not switch SQLite to WAL (got {mode!r})")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED"))


def _switch_to_wal(cur: Any, deadline: float) -> Any:
    """``PRAGMA journal_mode = WAL``, retried until ``deadline`` (a
    ``time.monotonic`` value) while the database is locked.

    Switching needs the exclusive lock, and when several processes open a new
    file together each holds a shared lock and asks to upgrade: SQLite then
    answers "database is locked" at once, without calling the busy handler
    (waiting could deadlock), so ``busy_timeout`` does not cover it."""
    pause = 0.001
    while True:
        try:
            return cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e).lower() or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# The storage refused the write (store.errors.StorageUnavailable): SQLite
# primary result codes (the extended code's low byte), PostgreSQL SQLSTATEs,
# and SQLite's messages for drivers that give no code.
SQLITE_STORAGE_CODES = {8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN"}
PG_STORAGE_STATES = {"53100": "disk_full", "58030": "io_error", "25006": "read_only_sql_transaction"}
SQLITE_STORAGE_MESSAGES = ("database or disk is full", "disk i/o error", "readonly database",
                           "unable to open database file")


def storage_failure(orig: BaseException | None) -> bool:
    """Whether the driver exception ``orig`` says the storage refused a write."""
    if orig is None:
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in SQLITE_STORAGE_CODES
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str):
        return state in PG_STORAGE_STATES
    text = str(orig).lower()
    return any(m in text for m in SQLITE_STORAGE_MESSAGES)


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except exc.IntegrityError as e:
        raise IntegrityFailure(str(e.orig)) from e
    except exc.DBAPIError as e:
        if storage_failure(e.orig):
            raise StorageUnavailable(str(e.orig)) from e
        raise StoreError(str(e)) from e
    except exc.SQLAlchemyError as e:
        raise StoreError(str(e)) from e


def fields_json(fields: Mapping[str, int]) -> str:
    for k, v in fields.items():
        if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"statement field {k!r}={v!r}: keys must be str, values int")
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))


def member_from_row(r: Row[Any]) -> MemberRecord:
    m = r._mapping
    return MemberRecord(
        m["member_id"],
        m["role"],
        m["metering_point"],
        m["sign_pk"],
        m["noise_pk"],
        m["credential"],
        m["valid_until"],
    )


def order_from_row(r: Row[Any]) -> OrderRecord:
    m = r._mapping
    return OrderRecord(
        m["order_id"],
        m["member_id"],
        m["side"],
        m["slot_start"],
        m["slot_len"],
        m["wh"],
        m["price"],
        m["expiry"],
        m["encoded"],
        bool(m["cancelled"]),
    )


def receipt_from_row(r: Row[Any]) -> ReceiptRecord:
    m = r._mapping
    return ReceiptRecord(
        m["trade_id"],
        m["order_id"],
        m["seller"],
        m["buyer"],
        m["slot_start"],
        m["slot_len"],
        m["wh"],
        m["price"],
        m["order_wh"],
        m["encoded"],
        m["created_at"],
    )


def statement_from_row(r: Row[Any]) -> StatementRecord:
    m = r._mapping
    fields = {str(k): int(v) for k, v in json.loads(m["fields"]).items()}
    return StatementRecord(m["member_id"], m["slot_start"], m["slot_len"], m["encoded"], fields)
