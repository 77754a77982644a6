"""The settlement loop on the mock clock: signed statements after each slot, idempotent."""

from __future__ import annotations

import trio
from p2pd_test_helpers import NOW, Community, node_identity

from p2pd.clock import TrioWallClock
from p2pd.components.settlement import SettlementConfig, SettlementLoop, aggregate
from p2pd.events import EventBus, StatementSigned
from p2pd.market.settlement import SignedStatement, Tariff, verify_statement
from store import MemberRecord, MemoryRepository, ReadingRecord, ReceiptRecord

SLOT = 900
START = int(NOW) // SLOT * SLOT - 4 * SLOT  # four slots before "now"
CFG = SettlementConfig(delay_seconds=60, backfill_seconds=86400, reading_gap_seconds=600)


def setup() -> tuple[MemoryRepository, object, object]:
    community = Community()
    alice, bob = community.member("alice"), community.member("bob")
    repo = MemoryRepository()
    meter = alice.credential.metering_point
    # 10 Wh export and 2 Wh import a minute, from START onwards.
    repo.add_readings([ReadingRecord(meter, START + 60 * i, 2 * i, 10 * i, None) for i in range(0, 80)])
    repo.put_member(MemberRecord("bob", "prosumer", "EANbob", bob.signing.public, bob.noise_public,
                                 bob.credential.encode(), bob.credential.valid_until))
    repo.commit_receipts([ReceiptRecord(b"t" * 16, b"o" * 16, "alice", "bob", START + SLOT, SLOT,
                                        100, 90_000, 500, b"receipt", START)])
    return repo, node_identity(alice), bob


async def test_statements_for_each_slot_signed_and_idempotent(autojump_clock: trio.abc.Clock) -> None:
    repo, ident, bob = setup()
    clock = TrioWallClock(START + 5)
    events = EventBus()
    loop = SettlementLoop(repo, ident, clock, slot_len=SLOT, tariff=Tariff(), config=CFG,
                          max_ahead=2 * 86400, events=events)
    async with trio.open_nursery() as nursery, events.subscribe() as rx:
        await nursery.start(loop.serve)
        assert loop.next_slot == START
        seen = []
        with trio.fail_after(4 * SLOT):
            async for ev in rx:
                assert isinstance(ev, StatementSigned)
                seen.append(ev.slot_start)
                if len(seen) == 3:
                    break
        assert seen == [START, START + SLOT, START + 2 * SLOT]
        nursery.cancel_scope.cancel()

    stored = repo.statements("alice", START, START + 3 * SLOT)
    assert [s.slot_start for s in stored] == seen
    traded = SignedStatement.decode(stored[1].encoded)
    verify_statement(traded)
    st = traded.statement
    assert st.member == ident.keys.signing.public and (st.import_wh, st.export_wh) == (30, 150)
    assert [(ln.seller, ln.buyer, ln.delivered_wh) for ln in st.lines] == [
        (ident.keys.signing.public, bob.signing.public, 100)]
    assert st.p2p_revenue == 9000 and st.settled_at == START + 2 * SLOT + 60
    assert stored[1].fields["trades"] == 1 and stored[0].fields["trades"] == 0

    # Settling again gives the same bytes; a new loop resumes after the last statement.
    again = await loop.settle(START + SLOT)
    assert again.encode() == stored[1].encoded
    fresh = SettlementLoop(repo, ident, clock, slot_len=SLOT, tariff=Tariff(), config=CFG, max_ahead=86400)
    assert await fresh.restore(START + 10 * SLOT) == START + 3 * SLOT
    # Readings stop at START + 79 min, inside slot 5: it waits, then is skipped.
    assert await fresh.settle_due(START + 5 * SLOT + 60) == [START + 3 * SLOT, START + 4 * SLOT]
    assert await fresh.settle_due(START + 6 * SLOT + 60) == []
    assert fresh.counters["slots_waiting"] == 1 and fresh.next_slot == START + 5 * SLOT
    assert await fresh.settle_due(START + 6 * SLOT + 600) == []
    assert fresh.counters["slots_skipped"] == 1 and fresh.next_slot == START + 6 * SLOT

def test_day_and_month_totals() -> None:
    repo, ident, _ = setup()

    async def settle_two() -> None:
        clock = TrioWallClock(START)
        loop = SettlementLoop(repo, ident, clock, slot_len=SLOT, tariff=Tariff(), config=CFG,
                              max_ahead=86400)
        for slot in (START, START + SLOT):
            await loop.settle(slot)

    trio.run(settle_two)
    records = repo.statements("alice", 0, 2**40)
    days = aggregate(records, "day")
    assert len(days) == 1 and days[0]["slots"] == 2 and days[0]["trades"] == 1
    assert days[0]["export_wh"] == 300 and days[0]["bill"] == sum(r.fields["bill"] for r in records)
    months = aggregate(records, "month")
    assert months[0]["month"] == days[0]["day"][:7] and months[0]["saving"] == days[0]["saving"]
    slots = aggregate(records, "slot")
    assert [s["slot_start"] for s in slots] == [START, START + SLOT] and "statement" in slots[0]


async def test_a_statement_the_store_cannot_write_is_retried_not_skipped() -> None:
    """Issue 12: a full disk costs the loop a retry, neither the slot nor the daemon."""
    from store import StorageUnavailable

    repo, ident, _ = setup()
    loop = SettlementLoop(repo, ident, TrioWallClock(START), slot_len=SLOT, tariff=Tariff(), config=CFG,
                          max_ahead=86400)
    put = repo.put_statement

    def full(rec: object) -> None:
        raise StorageUnavailable("database or disk is full")

    repo.put_statement = full  # type: ignore[method-assign]
    assert await loop.settle_due(START + 2 * SLOT + 60) == []
    assert loop.next_slot == START and loop.counters["statements_unstored"] == 1
    assert loop.counters["slots_skipped"] == 0
    repo.put_statement = put  # type: ignore[method-assign]
    assert await loop.settle_due(START + 2 * SLOT + 60) == [START, START + SLOT]
