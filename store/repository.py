"""The interface the daemon uses to persist its state.

All methods are synchronous and block; ``p2pd`` calls them through
``trio.to_thread.run_sync``. Implementations are safe for one writer thread
plus concurrent reader calls (the SQL one also for several writers and several
processes on one file).

Invariant (the reason this package exists): for every ``order_id``, the sum of
``wh`` over stored receipts is at most the ``order_wh`` those receipts carry.
``commit_receipts`` is the only way receipts get in, and it checks and writes
in one transaction that holds the write lock from its first read.
"""

from __future__ import annotations

from typing import Protocol

from store.records import (
    BanRecord,
    EpochKeyRecord,
    FollowRecord,
    HeadRecord,
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
)


class Repository(Protocol):
    """Storage for members, orders, receipts, readings and peer state.

    Lists come back sorted as stated per method. Unless stated, methods raise
    only :class:`store.StoreError` (or subclasses) on database failure.
    """

    # -- members ------------------------------------------------------------

    #: True if calls may block on I/O (callers then run them in a worker
    #: thread); False for stores that answer from memory at once.
    blocking: bool

    #: What opening the store did to upgrade its data, one line per schema
    #: step that changed something (empty when nothing was upgraded).
    upgrade_notes: list[str]

    def put_member(self, rec: MemberRecord) -> None:
        """Insert or replace the member with ``rec.member_id``."""

    def get_member(self, member_id: str) -> MemberRecord | None:
        """Return the member, or None if unknown."""

    def members(self) -> list[MemberRecord]:
        """Return all members sorted by member_id."""

    # -- orders -------------------------------------------------------------
    def put_order(self, rec: OrderRecord) -> bool:
        """Store a new order. Return False (and change nothing) if an order
        with this order_id exists already."""

    def get_order(self, order_id: bytes) -> OrderRecord | None:
        """Return the order, or None if unknown."""

    def live_orders(self, now: int) -> list[OrderRecord]:
        """Return orders not cancelled with ``expiry > now``, sorted by
        (slot_start, order_id)."""

    def cancel_order(self, order_id: bytes) -> bool:
        """Mark the order cancelled. Return True if it existed and was not
        cancelled before. Receipts for it are still accepted (trades may be in
        flight); the protocol decides whether to make new ones."""

    def remaining_wh(self, order_id: bytes, order_wh: int) -> int:
        """Return ``order_wh`` minus the stored receipts' wh for the order,
        clamped at 0. Advisory only: use commit_receipts to claim energy."""

    # -- receipts -----------------------------------------------------------
    def commit_receipts(self, batch: list[ReceiptRecord]) -> list[Outcome]:
        """Store a batch of receipts in one transaction, in order.

        Returns one outcome per item, in the same order: ``Duplicate(stored)``
        if the trade_id is stored already (also when it appeared earlier in this
        batch); ``Insufficient(remaining_wh)`` if stored wh for the order plus
        this wh would exceed the receipt's ``order_wh``; else ``Committed``.
        Returns only after the transaction is durable; if it raises, nothing of
        the batch was stored. Raises ValueError (before writing) if a receipt
        has ``wh <= 0`` or ``order_wh < 0``.
        """

    def get_receipt(self, trade_id: bytes) -> ReceiptRecord | None:
        """Return the receipt, or None if unknown."""

    def receipts(
        self, member_id: str | None = None, since: int | None = None
    ) -> list[ReceiptRecord]:
        """Return receipts where ``member_id`` is seller or buyer (all if None)
        and ``created_at >= since`` (all if None), sorted by
        (created_at, trade_id)."""

    def receipts_for_order(self, order_id: bytes) -> list[ReceiptRecord]:
        """Return the order's receipts sorted by (created_at, trade_id)."""

    def log_entries(self, after: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        """This node's receipt log: ``(seq, receipt bytes)`` for seq > ``after``, in
        order, at most ``limit``. Seqs are assigned by ``commit_receipts``
        (1, 2, ... with no gaps) and never change."""

    # -- pending takes ------------------------------------------------------
    def put_pending_take(self, rec: PendingTakeRecord) -> bool:
        """Store a take before it is sent. Return False (and change nothing) if
        one with this trade id is stored already."""

    def pending_takes(self) -> list[PendingTakeRecord]:
        """Return the takes still waiting for a receipt, oldest first."""

    def delete_pending_take(self, trade_id: bytes) -> bool:
        """Forget a take (its receipt is committed, or it was refused). Return
        True if it was stored."""

    # -- replicas -----------------------------------------------------------
    def put_replica(self, rec: ReplicaRecord) -> bool:
        """Hold entry ``rec.seq`` of ``rec.member``'s log. Return False (and
        change nothing) if that entry is held already."""

    def put_replicas(self, batch: list[ReplicaRecord]) -> int:
        """Hold several entries in one transaction (entries held already are
        skipped). Return how many were new."""

    def replicas(self, member: str, after: int = 0, limit: int = 1000) -> list[ReplicaRecord]:
        """Return held entries of ``member``'s log with seq > ``after``, by seq."""

    def replica_count(self) -> int:
        """Return how many entries of other members' logs are held."""

    # -- heads and followed logs --------------------------------------------
    def put_head(self, rec: HeadRecord) -> bool:
        """Keep a signed head of another member's log. Return False (and change
        nothing) if (member, seq, head_hash) is kept already; a second head
        for one seq with another hash is kept too (it is proof)."""

    def heads(self, member: str | None = None) -> list[HeadRecord]:
        """Return the kept heads of ``member`` (all members if None), sorted
        by (member, seq, head_hash)."""

    def put_follow(self, rec: FollowRecord) -> None:
        """Insert or replace the followed log of ``rec.member``."""

    def follows(self) -> list[FollowRecord]:
        """Return the followed logs sorted by member."""

    # -- readings -----------------------------------------------------------
    def add_readings(self, readings: list[ReadingRecord]) -> int:
        """Store readings; a reading whose (meter_id, ts) is stored already is
        skipped (the first one stored wins). Return how many were new."""

    def readings(self, meter_id: str, start: int, end: int) -> list[ReadingRecord]:
        """Return the meter's readings with ``start <= ts < end`` sorted by ts."""

    # -- statements ---------------------------------------------------------
    def put_statement(self, rec: StatementRecord) -> None:
        """Insert or replace the statement for (member_id, slot_start).
        Raises TypeError if a ``fields`` key is not a str or a value not an int."""

    def statements(self, member_id: str, start: int, end: int) -> list[StatementRecord]:
        """Return the member's statements with ``start <= slot_start < end``,
        sorted by slot_start."""

    # -- bans ---------------------------------------------------------------
    def put_ban(self, rec: BanRecord) -> None:
        """Insert or replace the ban on ``rec.member_id`` (one per member)."""

    def bans(self, now: int) -> list[BanRecord]:
        """Return bans with ``until > now`` sorted by member_id."""

    def clear_ban(self, member_id: str) -> bool:
        """Delete the member's ban. Return True if there was one."""

    # -- peer addresses -----------------------------------------------------
    def put_peer_address(self, rec: PeerAddressRecord) -> bool:
        """Store the address unless one with a newer or equal seen_at is
        stored for the member. Return True if ``rec`` was stored."""

    def peer_addresses(self) -> list[PeerAddressRecord]:
        """Return one address per member sorted by member_id."""

    # -- revocations --------------------------------------------------------
    def put_revocation(self, rec: RevocationRecord) -> bool:
        """Store a revocation. Return False if (issuer_pk, member_id, serial)
        is stored already."""

    def revocations(self) -> list[RevocationRecord]:
        """Return all revocations sorted by (issuer_pk, member_id, serial)."""

    # -- pseudonym wallet (a member) ------------------------------------------
    def wallet_salt(self, candidate: bytes) -> bytes:
        """Return the wallet's salt, storing ``candidate`` first if there is none."""

    def put_pseudonyms(self, batch: list[PseudonymRecord]) -> None:
        """Insert or replace the wallet's pseudonyms (by epoch and index), in one transaction."""

    def use_pseudonym(self, epoch: int, index: int) -> bool:
        """Mark a granted pseudonym used. Return False (and change nothing) if
        it is unknown, not granted or used already."""

    def pseudonyms(self, since_epoch: int) -> list[PseudonymRecord]:
        """Return the wallet's pseudonyms of ``epoch >= since_epoch`` by (epoch, index)."""

    def drop_pseudonyms(self, before_epoch: int) -> int:
        """Forget pseudonyms of epochs before ``before_epoch``. Return how many."""

    # -- pseudonym service (an issuer) ----------------------------------------
    def put_epoch_key(self, rec: EpochKeyRecord) -> bool:
        """Store an epoch's key. Return False (and change nothing) if the epoch has one."""

    def epoch_keys(self) -> list[EpochKeyRecord]:
        """Return the stored epoch keys by epoch."""

    def put_quota(self, rec: QuotaRecord) -> None:
        """Insert or replace the count of (member_id, epoch)."""

    def quotas(self, since_epoch: int) -> list[QuotaRecord]:
        """Return the counts of ``epoch >= since_epoch`` by (epoch, member_id)."""

    # -- maintenance --------------------------------------------------------
    def schema_version(self) -> int:
        """Return the schema version of the open store."""

    def integrity_check(self) -> str:
        """Return ``"ok"`` if the database is sound, else the problems found
        (SQLite's ``PRAGMA integrity_check`` text)."""

    def close(self) -> None:
        """Release connections and files. The repository is unusable after."""
