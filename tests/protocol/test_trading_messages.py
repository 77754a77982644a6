"""GossipControl (type 39) and GossipBatch (type 40): wire form and limits."""

from __future__ import annotations

import pytest

from protocol import DecodeError, Reason, SigningKey, decode_message, encode_message, pack
from protocol.trading import (
    BATCH_MAX,
    GOSSIP_NONE,
    GOSSIP_SOME,
    Cancel,
    CancelGossip,
    GossipBatch,
    GossipControl,
)

KEY = SigningKey.from_seed(bytes(range(32)))


def cancel(i: int) -> CancelGossip:
    c = Cancel.create(KEY, order_id=i.to_bytes(16, "big"), member_id="alice", issued_at=1_800_000_000)
    return CancelGossip(c, 8)


def test_gossip_control_wire_form() -> None:
    assert encode_message(GossipControl(GOSSIP_NONE)).hex() == "93012700"
    assert decode_message(bytes.fromhex("93012702")) == GossipControl(GOSSIP_SOME)


@pytest.mark.parametrize("body", [[1, 39, 3], [1, 39, True], [1, 39], [1, 39, 1, 1]])
def test_gossip_control_bad_mode_is_invalid(body: list[object]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(pack(body))
    assert info.value.reason == Reason.INVALID_MESSAGE


def test_gossip_batch_round_trip() -> None:
    batch = GossipBatch((), (cancel(1), cancel(2)))
    assert decode_message(encode_message(batch)) == batch


def test_gossip_batch_holds_at_most_128_items() -> None:
    items = [cancel(i).to_wire() for i in range(BATCH_MAX + 1)]
    with pytest.raises(DecodeError) as info:
        decode_message(pack([1, 40, [], items]))
    assert info.value.reason == Reason.INVALID_MESSAGE
    assert len(decode_message(pack([1, 40, [], items[:BATCH_MAX]])).cancels) == BATCH_MAX  # type: ignore[attr-defined]


def test_gossip_batch_limit_counts_both_lists() -> None:
    # Orders and cancels together: 64 + 65 items is one too many.
    some = tuple(cancel(i) for i in range(65))
    with pytest.raises(ValueError):
        GossipBatch(some[:64], some)  # type: ignore[arg-type]  # only the count matters here
