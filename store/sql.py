"""The SQLAlchemy implementation of :class:`store.Repository`.

Threads and processes: one Engine per repository, one pooled connection per
call. Every write runs in a transaction that takes the database write lock
*before its first read* (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the
transaction-level advisory lock :data:`PG_WRITE_LOCK`, which every writer of
the database takes and readers never do), so the read-check-insert in
``commit_receipts``, the read-then-upserts and the schema creation and
upgrades on open cannot interleave with another writer, whether a thread here
or another process on the same file or database.

Durability (SQLite): WAL with ``synchronous=FULL`` syncs the WAL on every
commit, and ``commit_receipts`` returns only after COMMIT returned. So a
receipt reported ``Committed`` survives kill -9 or power loss, and a batch is
all or nothing. Batching many receipts per call is what makes this cheap: one
fsync per batch instead of per receipt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import Executable

from store import schema
from store._sql_support import (
    BEGIN_OPTION,
    chunks,
    fields_json,
    install_sqlite_hooks,
    member_from_row,
    order_from_row,
    receipt_from_row,
    statement_from_row,
    translate_errors,
)
from store.errors import StorageUnavailable, StoreError
from store.migrations import MIGRATIONS, Migration, migrate, read_version
from store.records import (
    BanRecord,
    Committed,
    Duplicate,
    EpochKeyRecord,
    FollowRecord,
    HeadRecord,
    Insufficient,
    MemberRecord,
    OrderRecord,
    Outcome,
    PeerAddressRecord,
    PendingTakeRecord,
    PseudonymRecord,
    QuotaRecord,
    ReadingRecord,
    ReceiptRecord,
    ReplicaRecord,
    RevocationRecord,
    StatementRecord,
    check_receipt,
)

# pg_advisory_xact_lock key of the store's write lock ("p2pd" in ASCII);
# advisory locks are per database, so stores on one server do not contend.
PG_WRITE_LOCK = 0x70327064


class SqlRepository:
    """A :class:`store.Repository` on any SQLAlchemy URL (tested: SQLite and
    PostgreSQL with psycopg 3; :func:`store.open_repository` refuses others).

    ``url``: e.g. ``"sqlite:///path/to.db"``, or ``"sqlite://"`` for a private
    in-memory database. ``migrations``: the upgrade steps after version 1
    (default: :data:`store.migrations.MIGRATIONS`; tests pass their own).
    ``busy_timeout_ms``: how long a writer waits for another's lock before
    raising StoreError. Opening applies missing migrations; raises
    SchemaVersionError if the database is newer than the code.
    """

    blocking = True

    def __init__(
        self,
        url: str,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        u = make_url(url)
        self._dialect = u.get_backend_name()
        self.on_write: Callable[[StorageUnavailable | None], None] | None = None
        """Told after each write transaction (in the calling thread): ``None``
        when it committed a change, the error when the storage refused it."""
        self._test_max_pages: int | None = None
        self._test_hook_installed = False
        kwargs: dict[str, Any] = {}
        self._lock: threading.RLock | None = None
        if self._dialect == "sqlite":
            in_memory = u.database in (None, "", ":memory:") or "mode=memory" in str(u)
            if in_memory:
                # A private :memory: database exists once per connection, so
                # every thread must share the one connection; the lock makes
                # the calls take turns on it.
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
                self._lock = threading.RLock()
        elif self._dialect != "postgresql":
            # Untested backends get no explicit lock in _write; SERIALIZABLE
            # makes a conflicting writer fail (StoreError) instead of
            # over-committing an order.
            kwargs["isolation_level"] = "SERIALIZABLE"
        self._engine = create_engine(u, **kwargs)
        if self._dialect == "sqlite":
            install_sqlite_hooks(self._engine, busy_timeout_ms, on_disk=self._lock is None)
        self.upgrade_notes: list[str] = []
        try:
            with self._write() as conn:
                migrate(conn, migrations, self.upgrade_notes)
        except BaseException:
            self._engine.dispose()
            raise

    # -- transactions -------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """Yield a connection in a transaction holding the write lock; commit
        on normal exit (durable when this returns), roll back on error.
        Reports the outcome to :attr:`on_write` (a refused write, or one that
        changed something; a transaction that changed nothing says nothing
        about the storage)."""
        changed = True
        dbapi: Any = None
        before: int | None = None
        try:
            with self._lock or nullcontext(), translate_errors():
                conn = self._engine.connect()
                try:
                    if self._dialect == "sqlite":
                        conn = conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
                        dbapi = conn.connection.dbapi_connection
                        before = getattr(dbapi, "total_changes", None)
                    with conn.begin():
                        if self._dialect == "postgresql":
                            # Writers queue here, as SQLite's BEGIN IMMEDIATE makes them;
                            # readers go on. Released at COMMIT or ROLLBACK. Under READ
                            # COMMITTED each later statement sees what earlier writers
                            # committed, so the sums read after it are current.
                            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
                        yield conn
                    if self._dialect == "sqlite" and before is not None:
                        changed = getattr(dbapi, "total_changes", before) != before
                finally:
                    conn.close()
        except StorageUnavailable as exc:
            if self.on_write is not None:
                self.on_write(exc)
            raise
        if changed and self.on_write is not None:
            self.on_write(None)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with (
            self._lock or nullcontext(),
            translate_errors(),
            self._engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    def _insert_ignore(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> int:
        """Insert rows, skipping those whose primary key exists. Returns the
        number inserted."""
        if not rows:
            return 0
        if self._dialect in ("sqlite", "postgresql"):
            stmt: Executable
            if self._dialect == "sqlite":
                stmt = sqlite_dialect.insert(table).on_conflict_do_nothing()
            else:
                stmt = postgresql_dialect.insert(table).on_conflict_do_nothing()
            # One execute per row: single-row rowcount is exact on every
            # driver, executemany's is not; all rows share one transaction.
            # preserve_rowcount: SQLAlchemy keeps an INSERT's rowcount only when asked
            # (psycopg reports -1 otherwise).
            opts = {"preserve_rowcount": True}
            return sum(conn.execute(stmt, row, execution_options=opts).rowcount for row in rows)
        # Portable fallback (untested backends, SERIALIZABLE): check, then insert.
        pk = list(table.primary_key.columns)
        n = 0
        for row in rows:
            cond = and_(*(c == row[c.name] for c in pk))
            if conn.execute(select(pk[0]).where(cond)).first() is None:
                conn.execute(insert(table).values(row))
                n += 1
        return n

    def _upsert(self, conn: Connection, table: Table, row: dict[str, Any]) -> None:
        pk = list(table.primary_key.columns)
        cond = and_(*(c == row[c.name] for c in pk))
        if conn.execute(update(table).where(cond).values(row)).rowcount == 0:
            conn.execute(insert(table).values(row))

    # -- members ------------------------------------------------------------
    def put_member(self, rec: MemberRecord) -> None:
        with self._write() as conn:
            self._upsert(conn, schema.members, vars(rec).copy())

    def get_member(self, member_id: str) -> MemberRecord | None:
        t = schema.members
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.member_id == member_id)).first()
        return None if row is None else member_from_row(row)

    def members(self) -> list[MemberRecord]:
        t = schema.members
        with self._read() as conn:
            return [member_from_row(r) for r in conn.execute(select(t).order_by(t.c.member_id))]

    # -- orders -------------------------------------------------------------
    def put_order(self, rec: OrderRecord) -> bool:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.orders, [vars(rec).copy()]) == 1

    def get_order(self, order_id: bytes) -> OrderRecord | None:
        t = schema.orders
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.order_id == order_id)).first()
        return None if row is None else order_from_row(row)

    def live_orders(self, now: int) -> list[OrderRecord]:
        t = schema.orders
        q = (
            select(t)
            .where(t.c.cancelled.is_(False), t.c.expiry > now)
            .order_by(t.c.slot_start, t.c.order_id)
        )
        with self._read() as conn:
            return [order_from_row(r) for r in conn.execute(q)]

    def cancel_order(self, order_id: bytes) -> bool:
        t = schema.orders
        q = (
            update(t)
            .where(t.c.order_id == order_id, t.c.cancelled.is_(False))
            .values(cancelled=True)
        )
        with self._write() as conn:
            return conn.execute(q).rowcount == 1

    def remaining_wh(self, order_id: bytes, order_wh: int) -> int:
        t = schema.receipts
        q = select(func.coalesce(func.sum(t.c.wh), 0)).where(t.c.order_id == order_id)
        with self._read() as conn:
            used = int(conn.execute(q).scalar_one())
        return max(0, order_wh - used)

    # -- receipts -----------------------------------------------------------
    def commit_receipts(self, batch: list[ReceiptRecord]) -> list[Outcome]:
        for rec in batch:
            check_receipt(rec)
        if not batch:
            return []
        t = schema.receipts
        trade_ids = list(dict.fromkeys(r.trade_id for r in batch))
        order_ids = list(dict.fromkeys(r.order_id for r in batch))
        outcomes: list[Outcome] = []
        with self._write() as conn:
            # Invariant: from here to COMMIT we hold the write lock, so the
            # sums read below stay true while we add this batch to them.
            stored: dict[bytes, ReceiptRecord] = {}
            for chunk in chunks(trade_ids):
                for row in conn.execute(select(t).where(t.c.trade_id.in_(chunk))):
                    stored[row.trade_id] = receipt_from_row(row)
            used: dict[bytes, int] = dict.fromkeys(order_ids, 0)
            for chunk in chunks(order_ids):
                q = (
                    select(t.c.order_id, func.sum(t.c.wh))
                    .where(t.c.order_id.in_(chunk))
                    .group_by(t.c.order_id)
                )
                for oid, total in conn.execute(q):
                    used[oid] = int(total)
            new_rows: list[dict[str, Any]] = []
            seq = int(conn.execute(select(func.coalesce(func.max(t.c.log_seq), 0))).scalar_one())
            for rec in batch:
                if rec.trade_id in stored:
                    outcomes.append(Duplicate(stored[rec.trade_id]))
                elif used[rec.order_id] + rec.wh > rec.order_wh:
                    outcomes.append(Insufficient(max(0, rec.order_wh - used[rec.order_id])))
                else:
                    used[rec.order_id] += rec.wh
                    stored[rec.trade_id] = rec
                    seq += 1
                    new_rows.append({**vars(rec), "log_seq": seq})
                    outcomes.append(Committed(rec, seq))
            if new_rows:
                conn.execute(insert(t), new_rows)
        # Leaving _write committed; only now are the Committed outcomes true.
        return outcomes

    def get_receipt(self, trade_id: bytes) -> ReceiptRecord | None:
        t = schema.receipts
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.trade_id == trade_id)).first()
        return None if row is None else receipt_from_row(row)

    def receipts(
        self, member_id: str | None = None, since: int | None = None
    ) -> list[ReceiptRecord]:
        t = schema.receipts
        q = select(t).order_by(t.c.created_at, t.c.trade_id)
        if member_id is not None:
            q = q.where(or_(t.c.seller == member_id, t.c.buyer == member_id))
        if since is not None:
            q = q.where(t.c.created_at >= since)
        with self._read() as conn:
            return [receipt_from_row(r) for r in conn.execute(q)]

    def receipts_for_order(self, order_id: bytes) -> list[ReceiptRecord]:
        t = schema.receipts
        q = select(t).where(t.c.order_id == order_id).order_by(t.c.created_at, t.c.trade_id)
        with self._read() as conn:
            return [receipt_from_row(r) for r in conn.execute(q)]

    def log_entries(self, after: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        t = schema.receipts
        q = (select(t.c.log_seq, t.c.encoded).where(t.c.log_seq > after)
             .order_by(t.c.log_seq).limit(limit))
        with self._read() as conn:
            return [(int(seq), bytes(enc)) for seq, enc in conn.execute(q)]

    # -- pending takes ------------------------------------------------------
    def put_pending_take(self, rec: PendingTakeRecord) -> bool:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.pending_takes, [vars(rec).copy()]) == 1

    def pending_takes(self) -> list[PendingTakeRecord]:
        t = schema.pending_takes
        with self._read() as conn:
            return [PendingTakeRecord(r.trade_id, r.owner, r.terms, r.taker_sig, r.created_at)
                    for r in conn.execute(select(t).order_by(t.c.created_at, t.c.trade_id))]

    def delete_pending_take(self, trade_id: bytes) -> bool:
        t = schema.pending_takes
        with self._write() as conn:
            return conn.execute(delete(t).where(t.c.trade_id == trade_id)).rowcount == 1

    # -- replicas -----------------------------------------------------------
    def put_replica(self, rec: ReplicaRecord) -> bool:
        return self.put_replicas([rec]) == 1

    def put_replicas(self, batch: list[ReplicaRecord]) -> int:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.replicas, [vars(rec).copy() for rec in batch])

    def replicas(self, member: str, after: int = 0, limit: int = 1000) -> list[ReplicaRecord]:
        t = schema.replicas
        q = (select(t).where(t.c.member == member, t.c.seq > after).order_by(t.c.seq).limit(limit))
        with self._read() as conn:
            return [ReplicaRecord(r.member, r.seq, r.entry, r.head) for r in conn.execute(q)]

    def replica_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.replicas)).scalar_one())

    # -- heads and followed logs --------------------------------------------
    def put_head(self, rec: HeadRecord) -> bool:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.log_heads, [vars(rec).copy()]) == 1

    def heads(self, member: str | None = None) -> list[HeadRecord]:
        t = schema.log_heads
        q = select(t).order_by(t.c.member, t.c.seq, t.c.head_hash)
        if member is not None:
            q = q.where(t.c.member == member)
        with self._read() as conn:
            return [HeadRecord(r.member, r.seq, r.head_hash, r.signature) for r in conn.execute(q)]

    def put_follow(self, rec: FollowRecord) -> None:
        with self._write() as conn:
            self._upsert(conn, schema.followed_logs, vars(rec).copy())

    def follows(self) -> list[FollowRecord]:
        t = schema.followed_logs
        with self._read() as conn:
            return [FollowRecord(r.member, r.seq, r.head_hash) for r in conn.execute(select(t).order_by(t.c.member))]

    # -- readings -----------------------------------------------------------
    def add_readings(self, readings: list[ReadingRecord]) -> int:
        # Drop repeats inside the batch first (first wins, as in the table).
        rows = list({(r.meter_id, r.ts): vars(r).copy() for r in reversed(readings)}.values())
        with self._write() as conn:
            return self._insert_ignore(conn, schema.readings, rows)

    def readings(self, meter_id: str, start: int, end: int) -> list[ReadingRecord]:
        t = schema.readings
        q = (
            select(t)
            .where(t.c.meter_id == meter_id, t.c.ts >= start, t.c.ts < end)
            .order_by(t.c.ts)
        )
        with self._read() as conn:
            return [
                ReadingRecord(r.meter_id, r.ts, r.import_wh, r.export_wh, r.power_w)
                for r in conn.execute(q)
            ]

    # -- statements ---------------------------------------------------------
    def put_statement(self, rec: StatementRecord) -> None:
        row = {
            "member_id": rec.member_id,
            "slot_start": rec.slot_start,
            "slot_len": rec.slot_len,
            "encoded": rec.encoded,
            "fields": fields_json(rec.fields),
        }
        with self._write() as conn:
            self._upsert(conn, schema.statements, row)

    def statements(self, member_id: str, start: int, end: int) -> list[StatementRecord]:
        t = schema.statements
        q = (
            select(t)
            .where(t.c.member_id == member_id, t.c.slot_start >= start, t.c.slot_start < end)
            .order_by(t.c.slot_start)
        )
        with self._read() as conn:
            return [statement_from_row(r) for r in conn.execute(q)]

    # -- bans ---------------------------------------------------------------
    def put_ban(self, rec: BanRecord) -> None:
        with self._write() as conn:
            self._upsert(conn, schema.bans, vars(rec).copy())

    def bans(self, now: int) -> list[BanRecord]:
        t = schema.bans
        with self._read() as conn:
            rows = conn.execute(select(t).where(t.c.until > now).order_by(t.c.member_id))
            return [BanRecord(r.member_id, r.until, r.level, r.reason) for r in rows]

    def clear_ban(self, member_id: str) -> bool:
        t = schema.bans
        with self._write() as conn:
            return conn.execute(delete(t).where(t.c.member_id == member_id)).rowcount == 1

    # -- peer addresses -----------------------------------------------------
    def put_peer_address(self, rec: PeerAddressRecord) -> bool:
        t = schema.peer_addresses
        with self._write() as conn:
            seen = conn.execute(
                select(t.c.seen_at).where(t.c.member_id == rec.member_id)
            ).scalar_one_or_none()
            if seen is not None and seen >= rec.seen_at:
                return False
            self._upsert(conn, t, vars(rec).copy())
            return True

    def peer_addresses(self) -> list[PeerAddressRecord]:
        t = schema.peer_addresses
        with self._read() as conn:
            rows = conn.execute(select(t).order_by(t.c.member_id))
            return [
                PeerAddressRecord(r.member_id, r.host, r.port, r.seen_at, r.encoded) for r in rows
            ]

    # -- revocations --------------------------------------------------------
    def put_revocation(self, rec: RevocationRecord) -> bool:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.revocations, [vars(rec).copy()]) == 1

    def revocations(self) -> list[RevocationRecord]:
        t = schema.revocations
        q = select(t).order_by(t.c.issuer_pk, t.c.member_id, t.c.serial)
        with self._read() as conn:
            return [
                RevocationRecord(r.issuer_pk, r.member_id, r.serial, r.encoded)
                for r in conn.execute(q)
            ]

    # -- pseudonym wallet (a member) ------------------------------------------
    def wallet_salt(self, candidate: bytes) -> bytes:
        t = schema.wallet
        with self._write() as conn:
            self._insert_ignore(conn, t, [{"id": 1, "salt": candidate}])
            return bytes(conn.execute(select(t.c.salt).where(t.c.id == 1)).scalar_one())

    def put_pseudonyms(self, batch: list[PseudonymRecord]) -> None:
        with self._write() as conn:
            for rec in batch:
                self._upsert(conn, schema.wallet_pseudonyms,
                             {"epoch": rec.epoch, "idx": rec.index, "cert": rec.cert, "used": rec.used})

    def use_pseudonym(self, epoch: int, index: int) -> bool:
        t = schema.wallet_pseudonyms
        cond = and_(t.c.epoch == epoch, t.c.idx == index, t.c.cert.is_not(None), t.c.used.is_(False))
        with self._write() as conn:
            return conn.execute(update(t).where(cond).values(used=True)).rowcount == 1

    def pseudonyms(self, since_epoch: int) -> list[PseudonymRecord]:
        t = schema.wallet_pseudonyms
        q = select(t).where(t.c.epoch >= since_epoch).order_by(t.c.epoch, t.c.idx)
        with self._read() as conn:
            return [PseudonymRecord(r.epoch, r.idx, None if r.cert is None else bytes(r.cert), bool(r.used))
                    for r in conn.execute(q)]

    def drop_pseudonyms(self, before_epoch: int) -> int:
        t = schema.wallet_pseudonyms
        with self._write() as conn:
            return int(conn.execute(delete(t).where(t.c.epoch < before_epoch)).rowcount)

    # -- pseudonym service (an issuer) ----------------------------------------
    def put_epoch_key(self, rec: EpochKeyRecord) -> bool:
        with self._write() as conn:
            return self._insert_ignore(conn, schema.epoch_keys, [vars(rec).copy()]) == 1

    def epoch_keys(self) -> list[EpochKeyRecord]:
        t = schema.epoch_keys
        with self._read() as conn:
            return [EpochKeyRecord(r.epoch, bytes(r.public), bytes(r.private))
                    for r in conn.execute(select(t).order_by(t.c.epoch))]

    def put_quota(self, rec: QuotaRecord) -> None:
        with self._write() as conn:
            self._upsert(conn, schema.pseudonym_quota, vars(rec).copy())

    def quotas(self, since_epoch: int) -> list[QuotaRecord]:
        t = schema.pseudonym_quota
        q = select(t).where(t.c.epoch >= since_epoch).order_by(t.c.epoch, t.c.member_id)
        with self._read() as conn:
            return [QuotaRecord(r.member_id, r.epoch, r.used) for r in conn.execute(q)]

    # -- maintenance --------------------------------------------------------
    def schema_version(self) -> int:
        with self._read() as conn:
            version = read_version(conn)
        if version is None:
            raise StoreError("schema_meta table disappeared")
        return version

    def integrity_check(self) -> str:
        if self._dialect != "sqlite":
            return "ok"  # no portable equivalent; the server checks itself
        with self._read() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check")]
        return "\n".join(rows)

    def close(self) -> None:
        self._engine.dispose()

    # -- test hook ----------------------------------------------------------
    def limit_pages_for_tests(self, pages: int | None) -> None:
        """TEST HOOK, never called by p2pd outside tests: cap a SQLite
        database at ``pages`` pages (``PRAGMA max_page_count``, set on every
        connection as it is checked out). SQLite then answers a write that
        needs a new page with SQLITE_FULL, exactly as on a full disk, so
        :class:`StorageUnavailable` is raised. SQLite never caps below the
        current size: ``0`` means "full at the current size". ``None`` lifts
        the cap. Raises StoreError on another backend."""
        if self._dialect != "sqlite":
            raise StoreError("limit_pages_for_tests needs SQLite")
        self._test_max_pages = pages
        if not self._test_hook_installed:
            self._test_hook_installed = True

            def _cap(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
                limit = self._test_max_pages
                cur = dbapi_conn.cursor()
                try:
                    # 4294967294: SQLite's own ceiling (it clamps to it); it
                    # ignores 0 and raises anything below the current size to it.
                    cap = 4294967294 if limit is None else max(1, int(limit))
                    cur.execute(f"PRAGMA max_page_count = {cap}")
                finally:
                    cur.close()

            event.listen(self._engine.pool, "checkout", _cap)
