"""Table definitions (the latest schema version).

Why SQLAlchemy Core ``Table``s rather than ORM models: the repository hands out
frozen dataclasses, not live objects, so the ORM's identity map, unit of work
and lazy loading would only add per-row cost (ORM add+commit ran ~70x slower
than Core executemany here) and session state shared between threads. Core
gives plain SQL with portable types and dialect-specific upserts.

Rule: these tables always describe the *newest* version. A fresh database is
created from them directly; an older database reaches the same shape through
the steps in :mod:`store.migrations`. Change both together.

Integer columns are ``BigInteger`` so Wh, minor units and unix times fit 64
bits on every backend (SQLite's INTEGER is 64-bit anyway).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

metadata = MetaData()

# One row (id = 1) holding the schema version.
schema_meta = Table(
    "schema_meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("id = 1", name="schema_meta_one_row"),
)

members = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("metering_point", Text, nullable=False),
    Column("sign_pk", LargeBinary, nullable=False),
    Column("noise_pk", LargeBinary, nullable=False),
    Column("credential", LargeBinary, nullable=False),
    Column("valid_until", BigInteger, nullable=False),
)

# Orders and receipts reference members and each other only by value, without
# foreign keys: a node stores receipts for orders it never saw (it is the
# buyer) and members may be pruned while their signed history must stay.
orders = Table(
    "orders",
    metadata,
    Column("order_id", LargeBinary, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("slot_start", BigInteger, nullable=False),
    Column("slot_len", BigInteger, nullable=False),
    Column("wh", BigInteger, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("expiry", BigInteger, nullable=False),
    Column("encoded", LargeBinary, nullable=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    CheckConstraint("side IN ('sell', 'buy')", name="orders_side"),
    CheckConstraint("wh >= 0", name="orders_wh"),
    Index("orders_live", "cancelled", "expiry"),
    Index("orders_slot", "slot_start", "order_id"),
)

receipts = Table(
    "receipts",
    metadata,
    Column("trade_id", LargeBinary, primary_key=True),
    Column("order_id", LargeBinary, nullable=False),
    Column("seller", Text, nullable=False),
    Column("buyer", Text, nullable=False),
    Column("slot_start", BigInteger, nullable=False),
    Column("slot_len", BigInteger, nullable=False),
    Column("wh", BigInteger, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("order_wh", BigInteger, nullable=False),
    Column("encoded", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # This node's receipt log: the receipt's seq (1, 2, ...), assigned in the
    # transaction that stores it (schema version 2).
    Column("log_seq", BigInteger, nullable=True),
    # A receipt with wh <= 0 would "give back" energy and defeat the per-order
    # sum check, so the database refuses it too, not only the repository.
    CheckConstraint("wh > 0", name="receipts_wh_positive"),
    CheckConstraint("order_wh >= 0", name="receipts_order_wh"),
    # The per-order sum in commit_receipts reads this index on every commit.
    Index("receipts_order", "order_id", "wh"),
    Index("receipts_seller", "seller", "created_at"),
    Index("receipts_buyer", "buyer", "created_at"),
    Index("receipts_created", "created_at"),
    Index("receipts_log_seq", "log_seq", unique=True),
)

# Takes sent and not yet answered with a receipt (schema version 2).
pending_takes = Table(
    "pending_takes",
    metadata,
    Column("trade_id", LargeBinary, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("terms", LargeBinary, nullable=False),
    Column("taker_sig", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("pending_takes_owner", "owner"),
)

# Other members' log entries held as replicas (schema version 2). Version 5
# dropped those held under heads signed as p2pd/log-head/1 (store/migrations.py).
replicas = Table(
    "replicas",
    metadata,
    Column("member", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("entry", LargeBinary, nullable=False),
    Column("head", LargeBinary, nullable=False),
)

# Signed heads of other members' logs, as learnt (schema version 3): a second
# head for one seq with another hash is kept too, so equivocation stays
# provable after a restart. Version 5 dropped those signed as p2pd/log-head/1
# (and, with them, how far each followed log was verified).
log_heads = Table(
    "log_heads",
    metadata,
    Column("member", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("head_hash", LargeBinary, primary_key=True),
    Column("signature", LargeBinary, nullable=False),
)

# Logs this node follows and how far it verified each (schema version 3).
followed_logs = Table(
    "followed_logs",
    metadata,
    Column("member", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", LargeBinary, nullable=False),
)

readings = Table(
    "readings",
    metadata,
    Column("meter_id", Text, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("import_wh", BigInteger, nullable=False),
    Column("export_wh", BigInteger, nullable=False),
    Column("power_w", BigInteger, nullable=True),
)

statements = Table(
    "statements",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("slot_start", BigInteger, primary_key=True),
    Column("slot_len", BigInteger, nullable=False),
    Column("encoded", LargeBinary, nullable=False),
    # JSON text with sorted keys; values are ints (checked before writing).
    Column("fields", Text, nullable=False),
)

bans = Table(
    "bans",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("until", BigInteger, nullable=False),
    Column("level", Integer, nullable=False),
    Column("reason", Text, nullable=False),
)

peer_addresses = Table(
    "peer_addresses",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("seen_at", BigInteger, nullable=False),
    Column("encoded", LargeBinary, nullable=False),
)

revocations = Table(
    "revocations",
    metadata,
    Column("issuer_pk", LargeBinary, primary_key=True),
    Column("member_id", Text, primary_key=True),
    Column("serial", BigInteger, primary_key=True),
    Column("encoded", LargeBinary, nullable=False),
)

# The member's pseudonym wallet (schema version 4): a random salt (one row)
# that, with the node's signing key, derives every pseudonym's keys, and each
# pseudonym asked for, granted and used. A lost database means a new salt, so
# indices restarting at 0 never recreate a pseudonym already used.
wallet = Table(
    "wallet",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("salt", LargeBinary, nullable=False),
    CheckConstraint("id = 1", name="wallet_one_row"),
)

wallet_pseudonyms = Table(
    "wallet_pseudonyms",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("cert", LargeBinary, nullable=True),
    Column("used", Boolean, nullable=False),
)

# The issuer's pseudonym service (schema version 4): one key per epoch, kept
# before it is published, and each member's count per epoch, kept before the
# signatures leave.
epoch_keys = Table(
    "epoch_keys",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("public", LargeBinary, nullable=False),
    Column("private", LargeBinary, nullable=False),
)

pseudonym_quota = Table(
    "pseudonym_quota",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("used", BigInteger, nullable=False),
)

