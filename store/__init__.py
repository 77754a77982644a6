"""Persistent state of a p2pd node: members, orders, receipts, readings.

Layers: :mod:`store.records` (values) and :mod:`store.errors` at the bottom,
:mod:`store.repository` (the interface), then the implementations
:mod:`store.memory` and :mod:`store.sql` (on :mod:`store.schema` and
:mod:`store.migrations`); :mod:`store.urls` says which URLs are supported
(SQLite, PostgreSQL) and checks one without opening it. This package never imports ``p2pd``, ``protocol``
or ``meter_drivers``. Import from here, not from the submodules.
"""

from __future__ import annotations

from store.errors import IntegrityFailure as IntegrityFailure
from store.errors import SchemaVersionError as SchemaVersionError
from store.errors import StorageUnavailable as StorageUnavailable
from store.errors import StoreError as StoreError
from store.memory import MemoryRepository as MemoryRepository
from store.migrations import CURRENT_VERSION as CURRENT_VERSION
from store.migrations import Migration as Migration
from store.records import BanRecord as BanRecord
from store.records import Committed as Committed
from store.records import Duplicate as Duplicate
from store.records import FollowRecord as FollowRecord
from store.records import HeadRecord as HeadRecord
from store.records import Insufficient as Insufficient
from store.records import MemberRecord as MemberRecord
from store.records import OrderRecord as OrderRecord
from store.records import Outcome as Outcome
from store.records import PeerAddressRecord as PeerAddressRecord
from store.records import PendingTakeRecord as PendingTakeRecord
from store.records import ReadingRecord as ReadingRecord
from store.records import ReceiptRecord as ReceiptRecord
from store.records import ReplicaRecord as ReplicaRecord
from store.records import RevocationRecord as RevocationRecord
from store.records import StatementRecord as StatementRecord
from store.repository import Repository as Repository
from store.sql import SqlRepository as SqlRepository
from store.urls import StoreURLError as StoreURLError
from store.urls import check_url as check_url
from store.urls import parse_url as parse_url
from store.urls import probe as probe
from store.urls import safe_url as safe_url


def open_repository(url: str) -> Repository:
    """Open (creating and migrating as needed) the store at ``url``.

    ``"memory://"`` gives a :class:`MemoryRepository`; ``"sqlite://"`` or
    ``":memory:"`` a private in-memory SQLite database; ``"sqlite:///path"``
    a SQLite file (created if missing; its directory must exist);
    ``"postgresql://..."`` a PostgreSQL database through psycopg 3 (see
    :mod:`store.urls`). Raises StoreURLError for any other URL or a missing
    driver (before connecting), SchemaVersionError if the database is newer
    than this code, and StoreError if it cannot be opened. Call ``close()``
    when done.
    """
    if url == "memory://":
        return MemoryRepository()
    if url == ":memory:":
        url = "sqlite://"
    check_url(url)
    return SqlRepository(parse_url(url).render_as_string(hide_password=False))
