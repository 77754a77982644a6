"""Schema versions and the steps between them.

Version 1 is the initial schema. ``MIGRATIONS[i]`` upgrades a database from
version ``i + 1`` to ``i + 2``; each step is a function taking a
:class:`sqlalchemy.Connection` that is already inside the upgrade transaction
(it must not commit). The code's version is ``BASE_VERSION + len(steps)``.

Opening a database (see :func:`migrate`):
- no ``schema_meta`` table and no other tables: create the newest schema from
  :mod:`store.schema` and stamp the code's version;
- older version: run the missing steps, then stamp, all in one transaction, so
  a crash leaves either the old or the new schema, never a mix;
- newer version: raise :class:`SchemaVersionError` and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, insert, inspect, select, update

from store import schema
from store.errors import SchemaVersionError

Migration = Callable[[Connection], None]

BASE_VERSION = 1

# Append new steps here (and update store/schema.py to the result).
MIGRATIONS: tuple[Migration, ...] = ()

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


def migrate(conn: Connection, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database on ``conn`` to version ``BASE_VERSION + len(steps)``.

    ``conn`` must be inside a transaction that holds the write lock, so that
    two processes opening one new file do not both create it. Returns the
    version now stored. Raises SchemaVersionError if the database is newer
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
    for step in steps[version - BASE_VERSION :]:
        step(conn)
    if version != target:
        conn.execute(update(schema.schema_meta).values(version=target))
    return target
