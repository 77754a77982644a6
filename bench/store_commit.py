"""Receipt commit throughput: one receipt per transaction vs group commit.

Commits N receipts (default 5,000) to a fresh SQLite file in a temporary
directory, first one per ``commit_receipts`` call (one fsync each), then in
batches of 64 (one fsync per batch), with the store's real settings (WAL,
synchronous=FULL). Prints a summary, then as its last line one JSON object:
``{"per_txn_per_s": ..., "batched_per_s": ..., "ratio": ...}``.

Run: ``python bench/store_commit.py [N] [BATCH]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import Committed, ReceiptRecord, open_repository


def _receipts(prefix: str, n: int) -> list[ReceiptRecord]:
    # 100 orders with room for every receipt, so all of them commit.
    return [
        ReceiptRecord(
            trade_id=f"{prefix}-{i:08d}".encode(),
            order_id=f"{prefix}-order-{i % 100}".encode(),
            seller="alice",
            buyer="bob",
            slot_start=1_800_000_000,
            slot_len=900,
            wh=10,
            price=25,
            order_wh=10 * n,
            encoded=b"\x00" * 200,  # about the size of a signed receipt
            created_at=1_800_000_000 + i,
        )
        for i in range(n)
    ]


def _run(url: str, recs: list[ReceiptRecord], batch: int) -> float:
    repo = open_repository(url)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(recs), batch):
            outs = repo.commit_receipts(recs[i : i + batch])
            assert all(isinstance(o, Committed) for o in outs)
        return time.perf_counter() - t0
    finally:
        repo.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'bench.db'}"
        single = _run(url, _receipts("single", n), 1)
        grouped = _run(url, _receipts("batched", n), batch)
    per_txn = n / single
    batched = n / grouped
    print(f"store commit benchmark: {n} receipts, SQLite file, WAL, synchronous=FULL")
    print(f"  one receipt per transaction: {single:7.3f} s  {per_txn:10,.0f} receipts/s")
    print(f"  batches of {batch:<3}            : {grouped:7.3f} s  {batched:10,.0f} receipts/s")
    print(f"  group commit speed-up      : {batched / per_txn:.1f}x")
    print(
        json.dumps(
            {
                "per_txn_per_s": round(per_txn, 1),
                "batched_per_s": round(batched, 1),
                "ratio": round(batched / per_txn, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
