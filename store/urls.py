"""Store URLs: the backends this package supports, and checks that change nothing.

Supported (tested): ``memory://``; SQLite, ``sqlite:///PATH`` (a file) or
``sqlite://`` (private, in memory); PostgreSQL, ``postgresql://...`` or
``postgresql+psycopg://...`` with the psycopg 3 driver (the ``postgres``
extra of the p2pd-energy distribution, or ``pip install 'psycopg[binary]>=3.1,<4'``).
Any other database or driver is
refused before anything is opened, rather than half-working.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from store.errors import StoreError

MEMORY = "memory://"
# SQLAlchemy driver names we accept, and the one each means.
DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    # SQLAlchemy 2.0 defaults postgresql:// to psycopg2, 2.1 to psycopg: pin ours.
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
# Never "pip install p2pd[postgres]": p2pd on the package index is another project.
INSTALL_HINT = {"postgresql": "pip install 'psycopg[binary]>=3.1,<4' (psycopg 3)"}
EXAMPLES = "sqlite:///PATH or postgresql://USER@HOST/DB"


class StoreURLError(StoreError):
    """Raised when a store URL names a database or driver this package does not
    support, when the supported driver is not installed, or when a SQLite
    file's directory is missing or not writable: the configuration must
    change, retrying will not help."""


def parse_url(url: str) -> URL:
    """``url`` as SQLAlchemy's URL with our driver made explicit.

    Raises :class:`StoreURLError` for a malformed URL or an unsupported
    database or driver. ``memory://`` is not a SQLAlchemy URL: check for it
    first.
    """
    try:
        u = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise StoreURLError(f"not a database URL (expected {MEMORY}, {EXAMPLES})") from exc
    driver = DRIVERS.get(u.drivername)
    if driver is None:
        raise StoreURLError(f"unsupported database {u.drivername!r} (p2pd stores in SQLite or PostgreSQL: "
                            f"{EXAMPLES}, or {MEMORY} for tests)")
    return u.set(drivername=driver)


def safe_url(url: str) -> str:
    """``url`` for a message or log: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return url.split("://", 1)[0] + "://..."


def check_url(url: str) -> None:
    """Check ``url`` without opening or creating anything.

    The database and driver must be supported and the driver importable; a
    SQLite file's directory must exist and be writable (SQLite creates its
    journal files next to it), and the file, if it exists, must be a regular
    file that can be written. Raises :class:`StoreURLError` naming the
    problem; checked as the calling user.
    """
    if url == MEMORY or url == ":memory:":
        return
    u = parse_url(url)
    try:
        u.get_dialect().import_dbapi()
    except ImportError as exc:
        hint = INSTALL_HINT.get(u.get_backend_name(), f"install {u.get_driver_name()}")
        raise StoreURLError(f"the {u.get_backend_name()} driver is not installed: {hint}") from exc
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        _check_sqlite_file(Path(u.database))


def _check_sqlite_file(path: Path) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise StoreURLError(f"directory {directory} of the database does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreURLError(f"directory {directory} of the database is not writable")
    if path.exists():
        if not path.is_file():
            raise StoreURLError(f"{path} is not a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreURLError(f"{path} is not writable")


def probe(url: str) -> None:
    """:func:`check_url`, then for a database server, connect and read the
    schema version, writing nothing.

    Raises :class:`StoreURLError` as :func:`check_url` does,
    :class:`~store.errors.SchemaVersionError` if the database is newer than
    this code or not a p2pd store, and :class:`StoreError` if the server
    cannot be reached (which may pass by itself).
    """
    check_url(url)
    if url in (MEMORY, ":memory:"):
        return
    u = parse_url(url)
    if u.get_backend_name() == "sqlite":
        return  # opening a file could create it, or journal files owned by whoever checks
    from sqlalchemy import create_engine, inspect

    from store._sql_support import translate_errors
    from store.errors import SchemaVersionError
    from store.migrations import CURRENT_VERSION, read_version

    engine = create_engine(u)
    try:
        with translate_errors(), engine.connect() as conn:
            version = read_version(conn)
            if version is None and inspect(conn).get_table_names():
                raise SchemaVersionError("the database has tables but no schema_meta: not a p2pd store")
    finally:
        engine.dispose()
    if version is not None and version > CURRENT_VERSION:
        raise SchemaVersionError(f"database schema is version {version}, but this p2pd knows only up to "
                                 f"version {CURRENT_VERSION}: upgrade p2pd")
