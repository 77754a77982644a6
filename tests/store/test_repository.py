"""Non-receipt repository behaviour, shared by every implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import (
    CURRENT_VERSION,
    BanRecord,
    MemberRecord,
    MemoryRepository,
    OrderRecord,
    PeerAddressRecord,
    ReadingRecord,
    Repository,
    RevocationRecord,
    SqlRepository,
    StatementRecord,
    open_repository,
)


def _order(oid: bytes, slot: int = 1000, expiry: int = 5000, **kw: object) -> OrderRecord:
    fields: dict[str, object] = {
        "order_id": oid,
        "member_id": "alice",
        "side": "sell",
        "slot_start": slot,
        "slot_len": 900,
        "wh": 2000,
        "price": 25,
        "expiry": expiry,
        "encoded": b"sig" + oid,
    }
    fields.update(kw)
    return OrderRecord(**fields)  # type: ignore[arg-type]


def test_members(repo: Repository) -> None:
    bob = MemberRecord("bob", "prosumer", "MP-2", b"s" * 32, b"n" * 32, b"cred", 99)
    alice = MemberRecord("alice", "consumer", "MP-1", b"S" * 32, b"N" * 32, b"cred", 50)
    repo.put_member(bob)
    repo.put_member(alice)
    assert repo.get_member("bob") == bob
    assert repo.get_member("carol") is None
    assert repo.members() == [alice, bob]
    renewed = MemberRecord("bob", "prosumer", "MP-2", b"s" * 32, b"n" * 32, b"cred2", 199)
    repo.put_member(renewed)
    assert repo.members() == [alice, renewed]


def test_orders(repo: Repository) -> None:
    late = _order(b"\x02", slot=2000)
    early_b = _order(b"\x01b", slot=1000)
    early_a = _order(b"\x01a", slot=1000)
    expired = _order(b"\x00", slot=500, expiry=100)
    for o in (late, early_b, early_a, expired):
        assert repo.put_order(o) is True
    assert repo.put_order(_order(b"\x02", wh=1)) is False
    assert repo.get_order(b"\x02") == late
    assert repo.get_order(b"nope") is None
    assert repo.live_orders(now=100) == [early_a, early_b, late]
    assert repo.live_orders(now=99) == [expired, early_a, early_b, late]
    assert repo.cancel_order(b"\x01b") is True
    assert repo.cancel_order(b"\x01b") is False
    assert repo.cancel_order(b"nope") is False
    assert repo.live_orders(now=100) == [early_a, late]
    got = repo.get_order(b"\x01b")
    assert got is not None and got.cancelled
    assert repo.remaining_wh(b"\x01a", 2000) == 2000


def test_readings_dedup_and_range(repo: Repository) -> None:
    rs = [ReadingRecord("m1", ts, ts * 10, ts, None if ts % 2 else 500) for ts in (30, 10, 20)]
    assert repo.add_readings(rs) == 3
    # Exact repeats and a repeat inside one batch are skipped; first one wins.
    again = [rs[0], ReadingRecord("m1", 40, 1, 1, 1), ReadingRecord("m1", 40, 2, 2, 2)]
    assert repo.add_readings(again) == 1
    assert repo.add_readings([]) == 0
    repo.add_readings([ReadingRecord("m2", 20, 0, 0, None)])
    assert [r.ts for r in repo.readings("m1", 0, 100)] == [10, 20, 30, 40]
    assert repo.readings("m1", 20, 40) == [rs[2], rs[0]]  # start inclusive, end exclusive
    assert repo.readings("m1", 40, 41) == [ReadingRecord("m1", 40, 1, 1, 1)]
    assert repo.readings("m2", 0, 100) == [ReadingRecord("m2", 20, 0, 0, None)]
    assert repo.readings("m3", 0, 100) == []


def test_statement_upsert(repo: Repository) -> None:
    s1 = StatementRecord("alice", 900, 900, b"v1", {"import_wh": 10, "cost": -3})
    s0 = StatementRecord("alice", 0, 900, b"v0", {})
    repo.put_statement(s1)
    repo.put_statement(s0)
    repo.put_statement(StatementRecord("bob", 900, 900, b"b", {"x": 1}))
    assert repo.statements("alice", 0, 1800) == [s0, s1]
    s1b = StatementRecord("alice", 900, 900, b"v2", {"import_wh": 12, "cost": 2**40})
    repo.put_statement(s1b)
    assert repo.statements("alice", 0, 1800) == [s0, s1b]
    assert repo.statements("alice", 1, 900) == []
    with pytest.raises(TypeError):
        repo.put_statement(StatementRecord("alice", 0, 900, b"", {"wh": 1.5}))  # type: ignore[dict-item]


def test_bans(repo: Repository) -> None:
    repo.put_ban(BanRecord("mallory", until=200, level=1, reason="spam"))
    repo.put_ban(BanRecord("eve", until=100, level=2, reason="bad sig"))
    assert [b.member_id for b in repo.bans(now=50)] == ["eve", "mallory"]
    assert repo.bans(now=100) == [BanRecord("mallory", 200, 1, "spam")]
    repo.put_ban(BanRecord("mallory", until=300, level=3, reason="again"))
    assert repo.bans(now=250) == [BanRecord("mallory", 300, 3, "again")]
    assert repo.clear_ban("mallory") is True
    assert repo.clear_ban("mallory") is False
    assert repo.bans(now=0) == [BanRecord("eve", 100, 2, "bad sig")]


def test_peer_addresses_keep_newest(repo: Repository) -> None:
    a1 = PeerAddressRecord("alice", "10.0.0.1", 7000, 100, b"a1")
    assert repo.put_peer_address(a1) is True
    assert repo.put_peer_address(PeerAddressRecord("alice", "10.0.0.9", 7000, 50, b"old")) is False
    assert repo.put_peer_address(PeerAddressRecord("alice", "10.0.0.9", 7000, 100, b"eq")) is False
    a2 = PeerAddressRecord("alice", "10.0.0.2", 7001, 150, b"a2")
    assert repo.put_peer_address(a2) is True
    b = PeerAddressRecord("bob", "::1", 7000, 1, b"b")
    repo.put_peer_address(b)
    assert repo.peer_addresses() == [a2, b]


def test_revocations(repo: Repository) -> None:
    r1 = RevocationRecord(b"issuer", "mallory", 2, b"rev2")
    r0 = RevocationRecord(b"issuer", "mallory", 1, b"rev1")
    assert repo.put_revocation(r1) is True
    assert repo.put_revocation(r0) is True
    assert repo.put_revocation(RevocationRecord(b"issuer", "mallory", 2, b"x")) is False
    assert repo.revocations() == [r0, r1]


def test_pseudonym_wallet(repo: Repository) -> None:
    from store import PseudonymRecord

    assert repo.wallet_salt(b"s" * 32) == b"s" * 32
    assert repo.wallet_salt(b"t" * 32) == b"s" * 32  # the first salt stays
    asked = [PseudonymRecord(7, i, None, False) for i in range(3)]
    repo.put_pseudonyms(asked)
    assert repo.use_pseudonym(7, 0) is False  # not granted yet
    granted = [PseudonymRecord(7, i, bytes([i]) * 8, False) for i in range(2)]
    repo.put_pseudonyms(granted)
    assert repo.use_pseudonym(7, 1) is True and repo.use_pseudonym(7, 1) is False
    assert repo.use_pseudonym(8, 0) is False
    repo.put_pseudonyms([PseudonymRecord(9, 0, b"late", False)])
    assert repo.pseudonyms(7) == [granted[0], PseudonymRecord(7, 1, granted[1].cert, True), asked[2],
                                  PseudonymRecord(9, 0, b"late", False)]
    assert repo.drop_pseudonyms(9) == 3 and repo.pseudonyms(0) == [PseudonymRecord(9, 0, b"late", False)]


def test_pseudonym_service(repo: Repository) -> None:
    from store import EpochKeyRecord, QuotaRecord

    k = EpochKeyRecord(20600, b"public", b"wrapped")
    assert repo.put_epoch_key(k) is True
    assert repo.put_epoch_key(EpochKeyRecord(20600, b"other", b"other")) is False  # the first stays
    assert repo.epoch_keys() == [k]
    repo.put_quota(QuotaRecord("bob", 20600, 16))
    repo.put_quota(QuotaRecord("alice", 20600, 16))
    repo.put_quota(QuotaRecord("alice", 20600, 32))
    repo.put_quota(QuotaRecord("alice", 20599, 4))
    assert repo.quotas(20600) == [QuotaRecord("alice", 20600, 32), QuotaRecord("bob", 20600, 16)]


def test_maintenance(repo: Repository) -> None:
    assert repo.schema_version() == CURRENT_VERSION == 5
    assert repo.integrity_check() == "ok"


def test_open_repository_urls(tmp_path: Path) -> None:
    for url, cls in [
        ("memory://", MemoryRepository),
        ("sqlite://", SqlRepository),
        (":memory:", SqlRepository),
        (f"sqlite:///{tmp_path / 'x.db'}", SqlRepository),
    ]:
        r = open_repository(url)
        try:
            assert isinstance(r, cls)
            r.put_member(MemberRecord("m", "r", "mp", b"", b"", b"", 0))
            assert r.get_member("m") is not None
        finally:
            r.close()
    # The file survives a reopen; the in-memory ones do not share state.
    r = open_repository(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert [m.member_id for m in r.members()] == ["m"]
    finally:
        r.close()
    r = open_repository("sqlite://")
    try:
        assert r.members() == []
    finally:
        r.close()
