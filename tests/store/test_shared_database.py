"""One database, several writers: the per-order invariant, idempotent takes, schema
creation and upgrades, on a SQLite file and on a real PostgreSQL server (issue 13, point 10).

The PostgreSQL server is the test run's own (tests/conftest.py ``postgres``):
Debian's binaries, started in a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from store import (
    CURRENT_VERSION,
    Committed,
    Duplicate,
    ReceiptRecord,
    SchemaVersionError,
    SqlRepository,
    open_repository,
    parse_url,
)
from store.migrations import MIGRATIONS

MakeReceipt = Callable[..., ReceiptRecord]
ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 6
ROUNDS = 40
ORDERS = 3
ORDER_WH = 500
TAKE_WH = 10

# A writer process: waits for "go", then opens the (new, empty) database --
# all of them at once -- and commits takes of 10 Wh against three orders of
# 500 Wh (demand is PROCESSES * ROUNDS * 4 * 10 Wh, 6.4 times the supply),
# plus "shared" takes that every process commits with the same trade id, as
# a retried take arrives twice. Prints one JSON line per outcome.
WRITER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from store import Committed, Duplicate, Insufficient, ReceiptRecord, open_repository

    url, n, rounds, orders, order_wh, take_wh = sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:8])
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    repo = open_repository(url)
    kinds = {Committed: "committed", Duplicate: "duplicate", Insufficient: "insufficient"}
    for i in range(rounds):
        batch = [ReceiptRecord(f"{n}-{i}-{j}".encode(), f"o{(n + i + j) % orders}".encode(), "s", "b",
                               0, 900, take_wh, 1, order_wh, b"signed", i) for j in range(4)]
        batch += [ReceiptRecord(f"shared-{i}-{j}".encode(), b"big", "s", "b", 0, 900, 1, 1, 10**6,
                                b"signed-shared", i) for j in range(2)]
        for rec, out in zip(batch, repo.commit_receipts(batch), strict=True):
            print(json.dumps({"tid": rec.trade_id.decode(), "order": rec.order_id.decode(),
                              "outcome": kinds[type(out)]}), flush=True)
    repo.close()
    """
)


def test_writers_in_several_processes_never_oversell(shared_url: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT), shared_url, str(n), str(ROUNDS),
                               str(ORDERS), str(ORDER_WH), str(TAKE_WH)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(PROCESSES)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # as close to together as we can: they race to create the schema too
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    lines = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert len(lines) == PROCESSES * ROUNDS * 6
    outcomes = Counter(line["outcome"] for line in lines)
    committed = [line["tid"] for line in lines if line["outcome"] == "committed"]

    repo = open_repository(shared_url)
    try:
        stored = repo.receipts()
        sums: dict[str, int] = defaultdict(int)
        for r in stored:
            sums[r.order_id.decode()] += r.wh
        # Each order filled exactly, never past its size: oversold = 0.
        assert {o: sums[f"o{o}"] for o in range(ORDERS)} == dict.fromkeys(range(ORDERS), ORDER_WH)
        # Every take committed once, and what was reported committed is what is stored.
        assert len(committed) == len(set(committed))
        assert set(committed) == {r.trade_id.decode() for r in stored}
        # A take arriving in every process is stored once; the others learn it is a duplicate.
        shared = [line for line in lines if line["tid"].startswith("shared-")]
        per_id = Counter((line["tid"], line["outcome"]) for line in shared)
        for i in range(ROUNDS):
            for j in range(2):
                assert per_id[f"shared-{i}-{j}", "committed"] == 1
                assert per_id[f"shared-{i}-{j}", "duplicate"] == PROCESSES - 1
        # The receipt log's seqs were handed out under the same lock: 1..N, no gaps or repeats.
        seqs = [seq for seq, _ in repo.log_entries(0, limit=100_000)]
        assert seqs == list(range(1, len(stored) + 1))
        assert repo.schema_version() == CURRENT_VERSION
    finally:
        repo.close()
    assert outcomes["committed"] == ORDERS * ORDER_WH // TAKE_WH + ROUNDS * 2
    print(f"{shared_url.split(':')[0]}: {PROCESSES} processes, {len(lines)} takes, "
          f"{outcomes['committed']} committed, {outcomes['insufficient']} refused, "
          f"{outcomes['duplicate']} duplicates, oversold 0")


def test_ten_threads_with_their_own_engines_never_oversell(shared_url: str, make_receipt: MakeReceipt) -> None:
    orders = [f"o{i}".encode() for i in range(3)]
    main = open_repository(shared_url)
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        repo = open_repository(shared_url)
        try:
            barrier.wait()
            for i in range(10):
                repo.commit_receipts([make_receipt(f"{n}-{i}-{j}", order_id=orders[(n + i + j) % 3], wh=10,
                                                   order_wh=300) for j in range(4)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)
        finally:
            repo.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        sums: dict[bytes, int] = defaultdict(int)
        for r in main.receipts():
            sums[r.order_id] += r.wh
        assert sums == dict.fromkeys(orders, 300)
    finally:
        main.close()


# --- schema versions on both ----------------------------------------------------------------


def _downgrade_to_version_1(url: str) -> None:
    """Make a current store look as the previous release (schema 1) left it."""
    engine = create_engine(parse_url(url))  # the URL with our driver
    try:
        with engine.begin() as conn:
            for stmt in ("DROP INDEX receipts_log_seq", "ALTER TABLE receipts DROP COLUMN log_seq",
                         "DROP TABLE pending_takes", "DROP TABLE replicas", "DROP TABLE log_heads",
                         "DROP TABLE followed_logs", "DROP TABLE wallet", "DROP TABLE wallet_pseudonyms",
                         "DROP TABLE epoch_keys", "DROP TABLE pseudonym_quota",
                         "UPDATE schema_meta SET version = 1"):
                conn.execute(text(stmt))
    finally:
        engine.dispose()


def test_a_version_1_store_is_upgraded(shared_url: str, make_receipt: MakeReceipt) -> None:
    late, early = make_receipt("late", wh=1, created_at=20), make_receipt("early", wh=1, created_at=10)
    repo = open_repository(shared_url)
    repo.close()
    _downgrade_to_version_1(shared_url)
    engine = create_engine(parse_url(shared_url))
    try:
        with engine.begin() as conn:
            for rec in (late, early):
                conn.execute(text("INSERT INTO receipts VALUES (:trade_id, :order_id, :seller, :buyer, :slot_start,"
                                  " :slot_len, :wh, :price, :order_wh, :encoded, :created_at)"), vars(rec))
    finally:
        engine.dispose()
    repo = open_repository(shared_url)
    try:
        assert repo.schema_version() == CURRENT_VERSION == 5
        assert repo.log_entries() == [(1, early.encoded), (2, late.encoded)]
        new = make_receipt("new", wh=1)
        assert repo.commit_receipts([new]) == [Committed(new, seq=3)]
        assert repo.commit_receipts([new]) == [Duplicate(new)]
        assert repo.pending_takes() == [] and repo.replica_count() == 0
        assert repo.heads() == [] and repo.follows() == []
    finally:
        repo.close()


def test_a_failed_upgrade_changes_nothing_and_a_newer_store_is_refused(
        shared_url: str, make_receipt: MakeReceipt) -> None:
    repo = open_repository(shared_url)
    repo.commit_receipts([make_receipt("t1")])
    repo.close()

    def broken(conn: object) -> None:
        conn.exec_driver_sql("ALTER TABLE receipts ADD COLUMN note TEXT")  # type: ignore[attr-defined]
        raise RuntimeError("step failed half way")

    with pytest.raises(RuntimeError):
        SqlRepository(parse_url(shared_url).render_as_string(hide_password=False),
                      migrations=[*MIGRATIONS, broken])
    repo = open_repository(shared_url)
    try:
        assert repo.schema_version() == CURRENT_VERSION and repo.get_receipt(b"t1") is not None
    finally:
        repo.close()

    def note(conn: object) -> None:
        conn.exec_driver_sql("ALTER TABLE receipts ADD COLUMN note TEXT")  # type: ignore[attr-defined]

    SqlRepository(parse_url(shared_url).render_as_string(hide_password=False),
                  migrations=[*MIGRATIONS, note]).close()
    with pytest.raises(SchemaVersionError, match=f"only up to version {CURRENT_VERSION}"):
        open_repository(shared_url)
