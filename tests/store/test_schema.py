"""Schema versioning: fresh databases, the upgrade path, refusing newer ones."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from sqlalchemy import Connection

from store import (
    CURRENT_VERSION,
    Committed,
    MemberRecord,
    ReceiptRecord,
    SchemaVersionError,
    SqlRepository,
    StoreError,
    open_repository,
)
from store.migrations import MIGRATIONS

MakeReceipt = Callable[..., ReceiptRecord]


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _columns(url: str, table: str) -> list[str]:
    with sqlite3.connect(_path(url)) as c:
        cols = [row[1] for row in c.execute(f"PRAGMA table_info({table})")]
    c.close()
    return cols


def _add_note_column(conn: Connection) -> None:
    """Test-only step after the real ones: a new column, back-filled for old rows."""
    conn.exec_driver_sql("ALTER TABLE receipts ADD COLUMN note TEXT")
    conn.exec_driver_sql("UPDATE receipts SET note = 'migrated'")


def test_fresh_file_is_the_current_version_in_wal(db_url: str) -> None:
    r = SqlRepository(db_url)
    try:
        assert r.schema_version() == CURRENT_VERSION == 5
    finally:
        r.close()
    with sqlite3.connect(_path(db_url)) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT id, version FROM schema_meta").fetchall() == [(1, CURRENT_VERSION)]
    c.close()


def test_a_version_1_store_gets_its_receipt_log_order_on_upgrade(db_url: str, make_receipt: MakeReceipt) -> None:
    # A store as the previous release wrote it (schema 1): receipts without log seqs.
    late, early = make_receipt("late", wh=1, created_at=20), make_receipt("early", wh=1, created_at=10)
    SqlRepository(db_url).close()
    with sqlite3.connect(_path(db_url)) as c:
        c.executescript("DROP INDEX receipts_log_seq; ALTER TABLE receipts DROP COLUMN log_seq;"
                        "DROP TABLE pending_takes; DROP TABLE replicas; DROP TABLE log_heads;"
                        "DROP TABLE followed_logs; DROP TABLE wallet; DROP TABLE wallet_pseudonyms;"
                        "DROP TABLE epoch_keys; DROP TABLE pseudonym_quota; UPDATE schema_meta SET version = 1;")
        for rec in (late, early):
            c.execute("INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?)", tuple(vars(rec).values()))
    c.close()
    assert "log_seq" not in _columns(db_url, "receipts")
    r = open_repository(db_url)
    try:
        assert r.schema_version() == CURRENT_VERSION
        # Seqs follow the order the receipts were stored in (created_at).
        assert r.log_entries() == [(1, early.encoded), (2, late.encoded)]
        new = make_receipt("new", wh=1)
        assert r.commit_receipts([new]) == [Committed(new, seq=3)]
        assert r.pending_takes() == [] and r.replica_count() == 0
    finally:
        r.close()


def test_a_version_3_store_gets_an_empty_wallet_and_pseudonym_service(db_url: str) -> None:
    from store import EpochKeyRecord, PseudonymRecord, QuotaRecord

    SqlRepository(db_url).close()
    with sqlite3.connect(_path(db_url)) as c:
        c.executescript("DROP TABLE wallet; DROP TABLE wallet_pseudonyms; DROP TABLE epoch_keys;"
                        "DROP TABLE pseudonym_quota; UPDATE schema_meta SET version = 3;")
    c.close()
    r = open_repository(db_url)
    try:
        assert r.schema_version() == CURRENT_VERSION == 5
        assert r.pseudonyms(0) == [] and r.epoch_keys() == [] and r.quotas(0) == []
        r.put_pseudonyms([PseudonymRecord(5, 0, b"cert", False)])
        assert r.use_pseudonym(5, 0) and r.pseudonyms(5) == [PseudonymRecord(5, 0, b"cert", True)]
        assert r.put_epoch_key(EpochKeyRecord(5, b"pub", b"priv"))
        r.put_quota(QuotaRecord("alice", 5, 16))
        assert r.quotas(5) == [QuotaRecord("alice", 5, 16)]
    finally:
        r.close()


def test_a_version_2_store_learns_heads_and_follows(db_url: str) -> None:
    # Schema 2 held replicas but no heads of others and no followed logs (kept
    # in memory, lost at every restart). Version 5 drops the replicas: they
    # were held with heads signed as p2pd/log-head/1.
    from store import FollowRecord, HeadRecord, ReplicaRecord

    rec = ReplicaRecord("carol", 1, b"entry", b"head")
    r = SqlRepository(db_url)
    r.put_replica(rec)
    r.close()
    with sqlite3.connect(_path(db_url)) as c:
        c.executescript("DROP TABLE log_heads; DROP TABLE followed_logs; DROP TABLE wallet;"
                        "DROP TABLE wallet_pseudonyms; DROP TABLE epoch_keys; DROP TABLE pseudonym_quota;"
                        "UPDATE schema_meta SET version = 2;")
    c.close()
    r = open_repository(db_url)
    try:
        assert r.schema_version() == CURRENT_VERSION and r.replicas("carol") == [] and rec
        assert r.heads() == [] and r.follows() == []
        head = HeadRecord("carol", 1, b"H" * 32, b"S" * 64)
        assert r.put_head(head) and r.heads("carol") == [head]
        r.put_follow(FollowRecord("carol", 1, b"H" * 32))
        assert r.follows() == [FollowRecord("carol", 1, b"H" * 32)]
    finally:
        r.close()
    assert _columns(db_url, "log_heads") == ["member", "seq", "head_hash", "signature"]


def test_migration_path_keeps_data(db_url: str, make_receipt: MakeReceipt) -> None:
    rec = make_receipt("t1", wh=600)
    member = MemberRecord("alice", "prosumer", "MP-1", b"s", b"n", b"c", 99)
    v1 = SqlRepository(db_url)
    try:
        v1.commit_receipts([rec])
        v1.put_member(member)
        assert v1.schema_version() == CURRENT_VERSION
    finally:
        v1.close()
    assert "note" not in _columns(db_url, "receipts")

    v2 = SqlRepository(db_url, migrations=[*MIGRATIONS, _add_note_column])
    try:
        assert v2.schema_version() == CURRENT_VERSION + 1
        assert v2.get_receipt(b"t1") == rec
        assert v2.get_member("alice") == member
        assert v2.remaining_wh(b"order-1", 10_000) == 9_400
        # The repository still works on the upgraded table.
        rec2 = make_receipt("t2", wh=100)
        assert [type(o).__name__ for o in v2.commit_receipts([rec2])] == ["Committed"]
    finally:
        v2.close()
    with sqlite3.connect(_path(db_url)) as c:
        assert c.execute("SELECT trade_id, note FROM receipts ORDER BY trade_id").fetchall() == [
            (b"t1", "migrated"),
            (b"t2", None),
        ]
    c.close()

    # Reopening at that version does not run the step again (it would fail:
    # duplicate column).
    again = SqlRepository(db_url, migrations=[*MIGRATIONS, _add_note_column])
    try:
        assert again.schema_version() == CURRENT_VERSION + 1
    finally:
        again.close()


def test_failed_migration_rolls_back(db_url: str, make_receipt: MakeReceipt) -> None:
    v1 = SqlRepository(db_url)
    v1.commit_receipts([make_receipt("t1")])
    v1.close()

    def broken(conn: Connection) -> None:
        _add_note_column(conn)
        raise RuntimeError("step failed half way")

    with pytest.raises(RuntimeError):
        SqlRepository(db_url, migrations=[*MIGRATIONS, broken])
    # SQLite DDL is transactional (we issue BEGIN ourselves): nothing stuck.
    assert "note" not in _columns(db_url, "receipts")
    r = SqlRepository(db_url)
    try:
        assert r.schema_version() == CURRENT_VERSION
        assert r.get_receipt(b"t1") is not None
    finally:
        r.close()


def test_newer_database_is_refused(db_url: str) -> None:
    newer = SqlRepository(db_url, migrations=[*MIGRATIONS, _add_note_column])
    newer.close()
    with pytest.raises(SchemaVersionError, match=rf"version {CURRENT_VERSION + 1}.*only up to version {CURRENT_VERSION}"):
        open_repository(db_url)
    # Refusing changed nothing.
    with sqlite3.connect(_path(db_url)) as c:
        assert c.execute("SELECT version FROM schema_meta").fetchall() == [(CURRENT_VERSION + 1,)]
    c.close()


def test_foreign_database_is_refused(db_url: str) -> None:
    with sqlite3.connect(_path(db_url)) as c:
        c.execute("CREATE TABLE something_else (x INTEGER)")
    c.close()
    with pytest.raises(SchemaVersionError, match="not a p2pd store"):
        open_repository(db_url)
    assert issubclass(SchemaVersionError, StoreError)


def _a_version_4_store(url: str, make_receipt: MakeReceipt) -> list[ReceiptRecord]:
    """A store as p2pd wrote it before heads were signed as p2pd/log-head/2 (schema 4; the
    tables are those of 5, so the code without step 5 makes one): two own receipts at log
    seqs 1 and 2, carol's heads and a held entry of hers in the old raw form (the receipt
    itself), and her log followed up to seq 2."""
    from store import FollowRecord, HeadRecord, ReplicaRecord

    own = [make_receipt("t1", wh=100, created_at=10), make_receipt("t2", wh=200, created_at=20)]
    r = SqlRepository(url, migrations=MIGRATIONS[:-1])
    try:
        assert r.schema_version() == 4
        assert [type(o).__name__ for o in r.commit_receipts(own)] == ["Committed", "Committed"]
        for seq in (1, 2):
            assert r.put_head(HeadRecord("carol", seq, bytes([seq]) * 32, b"S" * 64))
        r.put_replica(ReplicaRecord("carol", 2, b"carol's raw receipt", b"carol's v1 head"))
        r.put_follow(FollowRecord("carol", 2, bytes([2]) * 32))
    finally:
        r.close()
    return own


def _learnt(url: str, version: int) -> dict[str, int]:
    r = SqlRepository(url, migrations=MIGRATIONS[: version - 1])
    try:
        return {"version": r.schema_version(), "heads": len(r.heads()), "replicas": r.replica_count(),
                "follows": len(r.follows()), "own": len(r.log_entries())}
    finally:
        r.close()


def test_a_version_4_store_keeps_its_own_log_and_drops_what_log_head_1_vouched_for(
        shared_url: str, make_receipt: MakeReceipt) -> None:
    from store import FollowRecord, HeadRecord

    own = _a_version_4_store(shared_url, make_receipt)
    r = SqlRepository(shared_url)
    try:
        assert r.schema_version() == CURRENT_VERSION == 5
        # Our receipts keep their seqs: the log is rebuilt over them as the v2 chain.
        assert r.log_entries() == [(1, own[0].encoded), (2, own[1].encoded)]
        # carol's heads and held entry no longer verify: gone. Her log is still
        # followed, verified again from seq 0.
        assert r.heads() == [] and r.replica_count() == 0
        assert r.follows() == [FollowRecord("carol", 0, bytes(32))]
        assert r.upgrade_notes == [
            "version 5: receipt log upgraded to p2pd/log-entry/2, heads p2pd/log-head/2: kept 2 own "
            "receipts at log seqs 1..2, the log is rebuilt over them; dropped 2 heads and 1 held entries "
            "of other members, signed as p2pd/log-head/1 and no longer verifiable; 1 followed logs will "
            "be verified again from seq 0"]
        new = make_receipt("t3", wh=300)
        assert r.commit_receipts([new]) == [Committed(new, seq=3)]
        assert r.put_head(HeadRecord("carol", 1, b"N" * 32, b"T" * 64))  # learnt after the upgrade
    finally:
        r.close()
    # Opening again upgrades nothing and drops nothing learnt since.
    again = SqlRepository(shared_url)
    try:
        assert again.upgrade_notes == [] and len(again.heads()) == 1
        assert [s for s, _ in again.log_entries()] == [1, 2, 3]
    finally:
        again.close()


def test_the_upgrade_to_version_5_is_one_transaction_so_a_crash_inside_it_changes_nothing(
        shared_url: str, make_receipt: MakeReceipt) -> None:
    # migrate() runs every missing step and stamps the version in the one
    # transaction that opening the store holds: a crash (kill -9, power) at any
    # point before its commit leaves version 4 with every row, and the next
    # start runs the whole upgrade again. Here the crash is an exception right
    # after step 5 did all its work, before the commit.
    _a_version_4_store(shared_url, make_receipt)
    before = _learnt(shared_url, 4)
    assert before == {"version": 4, "heads": 2, "replicas": 1, "follows": 1, "own": 2}

    def crash_after(conn: Connection) -> None:
        MIGRATIONS[-1](conn)
        raise RuntimeError("killed before the commit")

    with pytest.raises(RuntimeError, match="killed"):
        SqlRepository(shared_url, migrations=[*MIGRATIONS[:-1], crash_after])
    assert _learnt(shared_url, 4) == before
    r = SqlRepository(shared_url)  # the next start: the whole upgrade, once
    try:
        assert len(r.upgrade_notes) == 1 and "kept 2 own receipts" in r.upgrade_notes[0]
    finally:
        r.close()
    assert _learnt(shared_url, 5) == {"version": 5, "heads": 0, "replicas": 0, "follows": 1, "own": 2}
