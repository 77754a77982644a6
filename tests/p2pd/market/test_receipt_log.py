"""This node's receipt log (p2pd/market/receipt_log.py): plain synchronous tests."""

from __future__ import annotations

from p2pd.market.receipt_log import ReceiptLog
from protocol import SigningKey
from protocol.receipt_log import verify_entries

KEY = SigningKey.from_seed(bytes([7]) * 32)


def test_entries_enter_in_the_stores_order_even_when_they_arrive_out_of_it() -> None:
    log = ReceiptLog(KEY, "alice")
    assert log.add(2, b"second") == []  # waits for seq 1
    added = log.add(1, b"first")
    assert [(e, h.seq) for e, h in added] == [(b"first", 1), (b"second", 2)]
    assert log.add(1, b"first") == [] and log.add(2, b"other") == []  # known seqs change nothing
    verify_entries([b"first", b"second"], log.head, KEY.public)


def test_restoring_from_the_store_signs_the_same_heads() -> None:
    first = ReceiptLog(KEY, "alice")
    heads = [h for seq, e in enumerate([b"a", b"b", b"c"], start=1) for _, h in first.add(seq, e)]
    again = ReceiptLog(KEY, "alice")
    again.restore([(1, b"a"), (2, b"b"), (3, b"c")])
    assert again.head == heads[-1]  # Ed25519 is deterministic: same bytes, never a second head
    (entry, head), = again.add(4, b"d")
    assert head.seq == 4 and entry == b"d"
