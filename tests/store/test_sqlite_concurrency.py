"""The per-order invariant under threads, other processes and kill -9 (SQLite file)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from store import (
    Committed,
    Insufficient,
    ReceiptRecord,
    Repository,
    SqlRepository,
    StoreError,
    open_repository,
)

MakeReceipt = Callable[..., ReceiptRecord]
ROOT = Path(__file__).resolve().parents[2]


def _sums(repo: Repository) -> dict[bytes, int]:
    sums: dict[bytes, int] = defaultdict(int)
    for r in repo.receipts():
        sums[r.order_id] += r.wh
    return dict(sums)


def test_writer_takes_lock_up_front_and_readers_go_on(
    db_url: str, make_receipt: MakeReceipt
) -> None:
    repo = SqlRepository(db_url, busy_timeout_ms=50)
    repo.commit_receipts([make_receipt("t1")])
    other = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreError, match="locked"):
            repo.commit_receipts([make_receipt("t2")])
        # WAL: reads are not blocked by the writer.
        assert repo.get_receipt(b"t1") is not None
        other.execute("ROLLBACK")
        assert isinstance(repo.commit_receipts([make_receipt("t2")])[0], Committed)
    finally:
        other.close()
        repo.close()


@pytest.mark.parametrize("engines", ["shared", "one-per-thread"])
def test_ten_threads_never_exceed_order_wh(
    db_url: str, make_receipt: MakeReceipt, engines: str
) -> None:
    orders = [f"o{i}".encode() for i in range(3)]
    order_wh = 500
    main = SqlRepository(db_url)
    barrier = threading.Barrier(10)
    committed: list[ReceiptRecord] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        repo = main if engines == "shared" else SqlRepository(db_url)
        try:
            barrier.wait()
            for i in range(20):
                batch = [
                    make_receipt(
                        f"{n}-{i}-{j}", order_id=orders[(n + i + j) % 3], wh=10, order_wh=order_wh
                    )
                    for j in range(4)
                ]
                # A retry of an earlier batch now and then must not double-count.
                if i % 5 == 4:
                    batch.append(
                        make_receipt(
                            f"{n}-{i - 1}-0",
                            order_id=orders[(n + i - 1) % 3],
                            wh=10,
                            order_wh=order_wh,
                        )
                    )
                outs = repo.commit_receipts(batch)
                with lock:
                    committed.extend(o.receipt for o in outs if isinstance(o, Committed))
        except Exception as e:  # noqa: BLE001  (re-raised via the assert in the main thread)
            errors.append(e)
        finally:
            if repo is not main:
                repo.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        # Demand (10 threads x 80 x 10 Wh) is 5x the supply, so every order fills exactly.
        assert _sums(main) == {o: order_wh for o in orders}
        assert len(committed) == len({r.trade_id for r in committed}) == 150
        assert {r.trade_id for r in committed} == {r.trade_id for r in main.receipts()}
        assert main.integrity_check() == "ok"
    finally:
        main.close()


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from store import Committed, ReceiptRecord, open_repository

    repo = open_repository(sys.argv[2])
    run = sys.argv[3]
    for i in range(20_000):  # bounded; the parent kills us long before
        batch = [
            ReceiptRecord(f"{run}-{i}-{j}".encode(), f"o{(i * 8 + j) % 50}".encode(),
                          "s", "b", 0, 900, 7 + j, 1, 1_000, b"x" * 64, i)
            for j in range(8)
        ]
        for out in repo.commit_receipts(batch):
            if isinstance(out, Committed):
                print(out.receipt.trade_id.decode(), flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    printed: set[str] = set()
    # Kill at different points; the orders fill up over the runs, so later
    # runs also hit Insufficient while being killed.
    for run, kill_after in enumerate((50, 400, 1500, 2000)):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), url, f"r{run}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        seen = 0
        try:
            for line in proc.stdout:
                printed.add(line.strip())
                seen += 1
                if seen >= kill_after:
                    break
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate(timeout=10)
        printed.update(line for line in rest.split())
        assert proc.returncode == -signal.SIGKILL

    repo = open_repository(url)
    try:
        assert repo.integrity_check() == "ok"
        stored = {r.trade_id.decode() for r in repo.receipts()}
        assert printed <= stored
        sums = _sums(repo)
        assert max(sums.values()) <= 1_000
        assert len(sums) == 50
        # The store is still usable for writes after the crashes.
        out = repo.commit_receipts(
            [ReceiptRecord(b"after", b"o0", "s", "b", 0, 900, 1, 1, sums[b"o0"], b"", 0)]
        )
        assert out == [Insufficient(remaining_wh=0)]
    finally:
        repo.close()


# An opener process: for each round, waits for that round's instant (shared by
# all openers), then opens a new database file and closes it again.
OPENER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from store import StoreError, open_repository

    folder, start, rounds, spacing = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    for k in range(rounds):
        while time.time() < start + k * spacing:
            pass
        try:
            open_repository(f"sqlite:///{folder}/new-{k}.db").close()
            print("ok", flush=True)
        except StoreError as e:
            print("failed:", e, flush=True)
    """
)


def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    """Several processes (daemons, `p2pd store` commands) opening one new
    database file at the same moment: each switches it to WAL, which SQLite
    may refuse at once with "database is locked" instead of waiting. Every
    open succeeds."""
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    processes, rounds, spacing = 6, 12, 0.25
    start = time.time() + 3.0  # after every process has imported the store
    procs = [subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path), str(start),
                               str(rounds), str(spacing)], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    outputs = [p.communicate(timeout=120)[0].splitlines() for p in procs]
    assert [p.returncode for p in procs] == [0] * processes
    failures = [line for out in outputs for line in out if line != "ok"]
    assert failures == []
    assert sum(len(out) for out in outputs) == processes * rounds
    for k in range(rounds):
        with sqlite3.connect(tmp_path / f"new-{k}.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
