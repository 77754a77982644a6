"""Schema versions and the steps between them.

Version 1 is the initial schema. ``MIGRATIONS[i]`` upgrades a database from
version ``i + 1`` to ``i + 2``; each step is a function taking a
:class:`sqlalchemy.Connection` that is already inside the upgrade transaction
(it must not commit). A step may return a line saying what it did to the
data, for the operator (:func:`migrate` collects them; the daemon logs them).
The code's version is ``BASE_VERSION + len(steps)``.

Opening a database (see :func:`migrate`):
- no ``schema_meta`` table and no other tables: create the newest schema from
  :mod:`store.schema` and stamp the code's version;
- older version: run the missing steps, then stamp, all in one transaction, so
  a crash leaves either the old or the new schema, never a mix;
- newer version: raise :class:`SchemaVersionError` and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, delete, func, insert, inspect, select, update

from store import schema
from store.errors import SchemaVersionError

Migration = Callable[[Connection], "str | None"]

BASE_VERSION = 1

def _v2_receipt_log(conn: Connection) -> None:
    """Version 2: the receipt log's order in the store, pending takes, held replicas.

    Existing receipts get log seqs in the order they were stored
    (created_at, then trade id), the order the in-memory log of earlier
    versions appended them.
    """
    conn.exec_driver_sql("ALTER TABLE receipts ADD COLUMN log_seq BIGINT")
    t = schema.receipts
    rows = conn.execute(select(t.c.trade_id).order_by(t.c.created_at, t.c.trade_id)).all()
    for seq, (trade_id,) in enumerate(rows, start=1):
        conn.execute(update(t).where(t.c.trade_id == trade_id).values(log_seq=seq))
    for index in t.indexes:
        if index.name == "receipts_log_seq":
            index.create(conn)
    schema.pending_takes.create(conn)
    schema.replicas.create(conn)


def _v3_log_heads(conn: Connection) -> None:
    """Version 3: heads learnt from others, and the logs this node follows."""
    schema.log_heads.create(conn)
    schema.followed_logs.create(conn)


def _v4_pseudonyms(conn: Connection) -> None:
    """Version 4: the member's pseudonym wallet and the issuer's pseudonym service."""
    for table in (schema.wallet, schema.wallet_pseudonyms, schema.epoch_keys, schema.pseudonym_quota):
        table.create(conn)


def _v5_log_v2(conn: Connection) -> str:
    """Version 5: the receipt log chains receipts' digests, heads are signed as p2pd/log-head/2.

    The node's own receipts and their log seqs stay as they are: its log is
    rebuilt from them at start, over the new chain, with the same seqs.
    Everything learnt from others was checked against heads signed under
    ``p2pd/log-head/1``, which no longer verify (docs/protocol.md 15,
    "Upgrading from log-entry/1"): their heads, how far their logs were
    verified, and the entries held for them, each kept with such a head.
    Those entries (raw receipts, or sealed ones) are not converted even where
    a raw receipt and its signers' keys are at hand: an entry counts only with
    a head of its member's that it ends at, and only the member can sign the
    new one. Heads and entries are dropped; the logs followed stay followed,
    verified from seq 0 again (fetched anew, ending at new heads).
    """
    r = schema.receipts
    own, first, last = conn.execute(
        select(func.count(), func.min(r.c.log_seq), func.max(r.c.log_seq)).where(r.c.log_seq.is_not(None))
    ).one()
    counts = {}
    for name, table in (("heads", schema.log_heads), ("held entries", schema.replicas),
                        ("followed logs", schema.followed_logs)):
        counts[name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
    conn.execute(delete(schema.log_heads))
    conn.execute(delete(schema.replicas))
    conn.execute(update(schema.followed_logs).values(seq=0, head_hash=bytes(32)))
    seqs = f" at log seqs {first}..{last}" if own else ""
    return (f"receipt log upgraded to p2pd/log-entry/2, heads p2pd/log-head/2: kept {own} own "
            f"receipts{seqs}, the log is rebuilt over them; dropped {counts['heads']} heads and "
            f"{counts['held entries']} held entries of other members, signed as p2pd/log-head/1 and no "
            f"longer verifiable; {counts['followed logs']} followed logs will be verified again from seq 0")


# Append new steps here (and update store/schema.py to the result).
MIGRATIONS: tuple[Migration, ...] = (_v2_receipt_log, _v3_log_heads, _v4_pseudonyms, _v5_log_v2)

CURRENT_VERSION = BASE_VERSION + len(MIGRATIONS)


def read_version(conn: Connection) -> int | None:
    """Return the stored schema version, or None if the database has no
    ``schema_meta`` table (a new, empty database)."""
    if not inspect(conn).has_table(schema.schema_meta.name):
        return None
    version = conn.execute(select(schema.schema_meta.c.version)).scalar_one_or_none()
    if version is None:
        raise SchemaVersionError("schema_meta exists but holds no version row")
    return int(version)


def migrate(conn: Connection, steps: Sequence[Migration] = MIGRATIONS,
            notes: list[str] | None = None) -> int:
    """Bring the database on ``conn`` to version ``BASE_VERSION + len(steps)``.

    ``conn`` must be inside a transaction that holds the write lock, so that
    two processes opening one new file do not both create it. Returns the
    version now stored; appends to ``notes`` what the steps run said they did
    (``"version N: ..."``). Raises SchemaVersionError if the database is newer
    than ``steps`` know or is a non-empty database that is not a p2pd store.
    """
    target = BASE_VERSION + len(steps)
    version = read_version(conn)
    if version is None:
        others = inspect(conn).get_table_names()
        if others:
            raise SchemaVersionError(
                f"database has tables {sorted(others)[:5]} but no schema_meta: not a p2pd store"
            )
        schema.metadata.create_all(conn)
        conn.execute(insert(schema.schema_meta).values(id=1, version=target))
        return target
    if version > target:
        raise SchemaVersionError(
            f"database schema is version {version}, but this p2pd knows only up to "
            f"version {target}: upgrade p2pd (or restore a backup made for this version)"
        )
    if version < BASE_VERSION:
        raise SchemaVersionError(f"database schema version {version} is invalid")
    for i, step in enumerate(steps[version - BASE_VERSION :], start=version + 1):
        note = step(conn)
        if note is not None and notes is not None:
            notes.append(f"version {i}: {note}")
    if version != target:
        conn.execute(update(schema.schema_meta).values(version=target))
    return target
