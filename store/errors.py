"""Errors raised by the store.

Split by who is at fault: the database file is newer than this code
(:class:`SchemaVersionError`, an operator problem), the stored data contradicts
a constraint (:class:`IntegrityFailure`), or the database itself failed
(plain :class:`StoreError`, e.g. disk full or lock timeout). The driver's
exception is kept in ``__cause__``. Invalid arguments (a receipt with
``wh <= 0``) raise ``ValueError`` before anything is written.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of the store's errors; raised as-is when the database fails (I/O
    error, disk full, a lock not obtained within the busy timeout)."""


class SchemaVersionError(StoreError):
    """Raised when opening a database whose schema version is newer than this
    code knows, or that is not a p2pd store. Nothing was changed in it."""


class IntegrityFailure(StoreError):
    """Raised when a write breaks a database constraint that the repository
    should have prevented (a unique key or check) — a bug or a corrupt file."""
