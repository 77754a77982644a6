"""A dict-based :class:`store.Repository` for tests and throwaway nodes.

Nothing is persisted. One lock serialises every call, which gives the same
guarantees the SQL store gives per transaction: a ``commit_receipts`` batch is
checked and applied atomically.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from store.migrations import CURRENT_VERSION
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


def _receipt_key(r: ReceiptRecord) -> tuple[int, bytes]:
    return (r.created_at, r.trade_id)


class MemoryRepository:
    """A :class:`store.Repository` held in dicts; see the module docstring."""

    blocking = False

    def __init__(self) -> None:
        self.upgrade_notes: list[str] = []  # nothing to upgrade in memory
        self._lock = threading.Lock()
        self._members: dict[str, MemberRecord] = {}
        self._orders: dict[bytes, OrderRecord] = {}
        self._receipts: dict[bytes, ReceiptRecord] = {}
        self._used: dict[bytes, int] = {}  # order_id -> sum of receipts' wh
        self._readings: dict[tuple[str, int], ReadingRecord] = {}
        self._statements: dict[tuple[str, int], StatementRecord] = {}
        self._bans: dict[str, BanRecord] = {}
        self._peers: dict[str, PeerAddressRecord] = {}
        self._revocations: dict[tuple[bytes, str, int], RevocationRecord] = {}
        self._log: list[bytes] = []  # trade ids in log order (seq = index + 1)
        self._pending: dict[bytes, PendingTakeRecord] = {}
        self._replicas: dict[str, dict[int, ReplicaRecord]] = {}  # member -> seq -> entry
        self._heads: dict[tuple[str, int, bytes], HeadRecord] = {}
        self._follows: dict[str, FollowRecord] = {}
        self._salt: bytes | None = None
        self._pseudonyms: dict[tuple[int, int], PseudonymRecord] = {}
        self._epoch_keys: dict[int, EpochKeyRecord] = {}
        self._quotas: dict[tuple[int, str], QuotaRecord] = {}

    # -- members ------------------------------------------------------------
    def put_member(self, rec: MemberRecord) -> None:
        with self._lock:
            self._members[rec.member_id] = rec

    def get_member(self, member_id: str) -> MemberRecord | None:
        with self._lock:
            return self._members.get(member_id)

    def members(self) -> list[MemberRecord]:
        with self._lock:
            return sorted(self._members.values(), key=lambda m: m.member_id)

    # -- orders -------------------------------------------------------------
    def put_order(self, rec: OrderRecord) -> bool:
        with self._lock:
            if rec.order_id in self._orders:
                return False
            self._orders[rec.order_id] = rec
            return True

    def get_order(self, order_id: bytes) -> OrderRecord | None:
        with self._lock:
            return self._orders.get(order_id)

    def live_orders(self, now: int) -> list[OrderRecord]:
        with self._lock:
            live = [o for o in self._orders.values() if not o.cancelled and o.expiry > now]
        return sorted(live, key=lambda o: (o.slot_start, o.order_id))

    def cancel_order(self, order_id: bytes) -> bool:
        with self._lock:
            o = self._orders.get(order_id)
            if o is None or o.cancelled:
                return False
            self._orders[order_id] = replace(o, cancelled=True)
            return True

    def remaining_wh(self, order_id: bytes, order_wh: int) -> int:
        with self._lock:
            return max(0, order_wh - self._used.get(order_id, 0))

    # -- receipts -----------------------------------------------------------
    def commit_receipts(self, batch: list[ReceiptRecord]) -> list[Outcome]:
        for rec in batch:
            check_receipt(rec)
        outcomes: list[Outcome] = []
        with self._lock:
            for rec in batch:
                stored = self._receipts.get(rec.trade_id)
                used = self._used.get(rec.order_id, 0)
                if stored is not None:
                    outcomes.append(Duplicate(stored))
                elif used + rec.wh > rec.order_wh:
                    outcomes.append(Insufficient(max(0, rec.order_wh - used)))
                else:
                    self._receipts[rec.trade_id] = rec
                    self._used[rec.order_id] = used + rec.wh
                    self._log.append(rec.trade_id)
                    outcomes.append(Committed(rec, len(self._log)))
        return outcomes

    def get_receipt(self, trade_id: bytes) -> ReceiptRecord | None:
        with self._lock:
            return self._receipts.get(trade_id)

    def receipts(
        self, member_id: str | None = None, since: int | None = None
    ) -> list[ReceiptRecord]:
        with self._lock:
            out = [
                r
                for r in self._receipts.values()
                if (member_id is None or member_id in (r.seller, r.buyer))
                and (since is None or r.created_at >= since)
            ]
        return sorted(out, key=_receipt_key)

    def receipts_for_order(self, order_id: bytes) -> list[ReceiptRecord]:
        with self._lock:
            out = [r for r in self._receipts.values() if r.order_id == order_id]
        return sorted(out, key=_receipt_key)

    def log_entries(self, after: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._lock:
            ids = self._log[after : after + limit]
            return [(after + i + 1, self._receipts[tid].encoded) for i, tid in enumerate(ids)]

    # -- pending takes ------------------------------------------------------
    def put_pending_take(self, rec: PendingTakeRecord) -> bool:
        with self._lock:
            if rec.trade_id in self._pending:
                return False
            self._pending[rec.trade_id] = rec
            return True

    def pending_takes(self) -> list[PendingTakeRecord]:
        with self._lock:
            return sorted(self._pending.values(), key=lambda r: (r.created_at, r.trade_id))

    def delete_pending_take(self, trade_id: bytes) -> bool:
        with self._lock:
            return self._pending.pop(trade_id, None) is not None

    # -- replicas -----------------------------------------------------------
    def put_replica(self, rec: ReplicaRecord) -> bool:
        return self.put_replicas([rec]) == 1

    def put_replicas(self, batch: list[ReplicaRecord]) -> int:
        new = 0
        with self._lock:
            for rec in batch:
                held = self._replicas.setdefault(rec.member, {})
                if rec.seq not in held:
                    held[rec.seq] = rec
                    new += 1
        return new

    def replicas(self, member: str, after: int = 0, limit: int = 1000) -> list[ReplicaRecord]:
        with self._lock:
            held = self._replicas.get(member, {})
            seqs = sorted(s for s in held if s > after)[:limit]
            return [held[s] for s in seqs]

    def replica_count(self) -> int:
        with self._lock:
            return sum(len(held) for held in self._replicas.values())

    # -- heads and followed logs --------------------------------------------
    def put_head(self, rec: HeadRecord) -> bool:
        key = (rec.member, rec.seq, rec.head_hash)
        with self._lock:
            if key in self._heads:
                return False
            self._heads[key] = rec
            return True

    def heads(self, member: str | None = None) -> list[HeadRecord]:
        with self._lock:
            return [self._heads[k] for k in sorted(self._heads) if member is None or k[0] == member]

    def put_follow(self, rec: FollowRecord) -> None:
        with self._lock:
            self._follows[rec.member] = rec

    def follows(self) -> list[FollowRecord]:
        with self._lock:
            return [self._follows[m] for m in sorted(self._follows)]

    # -- readings -----------------------------------------------------------
    def add_readings(self, readings: list[ReadingRecord]) -> int:
        n = 0
        with self._lock:
            for r in readings:
                if (r.meter_id, r.ts) not in self._readings:
                    self._readings[(r.meter_id, r.ts)] = r
                    n += 1
        return n

    def readings(self, meter_id: str, start: int, end: int) -> list[ReadingRecord]:
        with self._lock:
            out = [
                r for (m, ts), r in self._readings.items() if m == meter_id and start <= ts < end
            ]
        return sorted(out, key=lambda r: r.ts)

    # -- statements ---------------------------------------------------------
    def put_statement(self, rec: StatementRecord) -> None:
        for k, v in rec.fields.items():
            if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"statement field {k!r}={v!r}: keys must be str, values int")
        # Copy the dict so later changes by the caller do not reach the store.
        rec = replace(rec, fields=dict(rec.fields))
        with self._lock:
            self._statements[(rec.member_id, rec.slot_start)] = rec

    def statements(self, member_id: str, start: int, end: int) -> list[StatementRecord]:
        with self._lock:
            out = [
                replace(s, fields=dict(s.fields))
                for (m, slot), s in self._statements.items()
                if m == member_id and start <= slot < end
            ]
        return sorted(out, key=lambda s: s.slot_start)

    # -- bans ---------------------------------------------------------------
    def put_ban(self, rec: BanRecord) -> None:
        with self._lock:
            self._bans[rec.member_id] = rec

    def bans(self, now: int) -> list[BanRecord]:
        with self._lock:
            out = [b for b in self._bans.values() if b.until > now]
        return sorted(out, key=lambda b: b.member_id)

    def clear_ban(self, member_id: str) -> bool:
        with self._lock:
            return self._bans.pop(member_id, None) is not None

    # -- peer addresses -----------------------------------------------------
    def put_peer_address(self, rec: PeerAddressRecord) -> bool:
        with self._lock:
            old = self._peers.get(rec.member_id)
            if old is not None and old.seen_at >= rec.seen_at:
                return False
            self._peers[rec.member_id] = rec
            return True

    def peer_addresses(self) -> list[PeerAddressRecord]:
        with self._lock:
            return sorted(self._peers.values(), key=lambda p: p.member_id)

    # -- revocations --------------------------------------------------------
    def put_revocation(self, rec: RevocationRecord) -> bool:
        key = (rec.issuer_pk, rec.member_id, rec.serial)
        with self._lock:
            if key in self._revocations:
                return False
            self._revocations[key] = rec
            return True

    def revocations(self) -> list[RevocationRecord]:
        with self._lock:
            return [self._revocations[k] for k in sorted(self._revocations)]

    # -- pseudonym wallet (a member) ------------------------------------------
    def wallet_salt(self, candidate: bytes) -> bytes:
        with self._lock:
            if self._salt is None:
                self._salt = candidate
            return self._salt

    def put_pseudonyms(self, batch: list[PseudonymRecord]) -> None:
        with self._lock:
            for rec in batch:
                self._pseudonyms[(rec.epoch, rec.index)] = rec

    def use_pseudonym(self, epoch: int, index: int) -> bool:
        with self._lock:
            rec = self._pseudonyms.get((epoch, index))
            if rec is None or rec.cert is None or rec.used:
                return False
            self._pseudonyms[(epoch, index)] = PseudonymRecord(epoch, index, rec.cert, True)
            return True

    def pseudonyms(self, since_epoch: int) -> list[PseudonymRecord]:
        with self._lock:
            return [self._pseudonyms[k] for k in sorted(self._pseudonyms) if k[0] >= since_epoch]

    def drop_pseudonyms(self, before_epoch: int) -> int:
        with self._lock:
            gone = [k for k in self._pseudonyms if k[0] < before_epoch]
            for k in gone:
                del self._pseudonyms[k]
            return len(gone)

    # -- pseudonym service (an issuer) ----------------------------------------
    def put_epoch_key(self, rec: EpochKeyRecord) -> bool:
        with self._lock:
            if rec.epoch in self._epoch_keys:
                return False
            self._epoch_keys[rec.epoch] = rec
            return True

    def epoch_keys(self) -> list[EpochKeyRecord]:
        with self._lock:
            return [self._epoch_keys[e] for e in sorted(self._epoch_keys)]

    def put_quota(self, rec: QuotaRecord) -> None:
        with self._lock:
            self._quotas[(rec.epoch, rec.member_id)] = rec

    def quotas(self, since_epoch: int) -> list[QuotaRecord]:
        with self._lock:
            return [self._quotas[k] for k in sorted(self._quotas) if k[0] >= since_epoch]

    # -- maintenance --------------------------------------------------------
    def schema_version(self) -> int:
        return CURRENT_VERSION

    def integrity_check(self) -> str:
        return "ok"

    def close(self) -> None:
        pass
