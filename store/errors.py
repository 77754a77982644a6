"""Errors raised by the store.

Split by who is at fault: the database file is newer than this code
(:class:`SchemaVersionError`, an operator problem), the stored data contradicts
a constraint (:class:`IntegrityFailure`), the storage under the database
cannot take writes (:class:`StorageUnavailable`: disk full, I/O error,
read-only; the machine's fault, gone once the operator frees space), or the
database failed otherwise (plain :class:`StoreError`, e.g. a lock timeout).
The driver's exception is kept in ``__cause__``. Invalid arguments (a receipt
with ``wh <= 0``) raise ``ValueError`` before anything is written.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of the store's errors; raised as-is when the database fails in a
    way none of the subclasses describes (e.g. a lock not obtained within the
    busy timeout)."""


class SchemaVersionError(StoreError):
    """Raised when opening a database whose schema version is newer than this
    code knows, or that is not a p2pd store. Nothing was changed in it."""


class IntegrityFailure(StoreError):
    """Raised when a write breaks a database constraint that the repository
    should have prevented (a unique key or check) — a bug or a corrupt file."""


class StorageUnavailable(StoreError):
    """Raised when the storage under the database refuses the write: disk (or
    quota) full, an I/O error, a read-only file or file system (SQLite
    SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY, SQLITE_CANTOPEN; PostgreSQL
    SQLSTATE 53100 disk_full, 58030 io_error, 25006 read_only_sql_transaction).
    The transaction did not commit, except that after an I/O
    error during COMMIT the outcome is unknown. Nothing is wrong with the
    request: the same call succeeds once the operator frees space or fixes
    the device."""
