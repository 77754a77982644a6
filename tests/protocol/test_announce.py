"""GossipLink (51), GossipHave (52) and GossipWant (53): wire form, limits, policing cost."""

from __future__ import annotations

import pytest

from protocol import (
    IDS_MAX,
    DecodeError,
    GossipHave,
    GossipLink,
    GossipWant,
    Reason,
    SlotIds,
    decode_message,
    encode_message,
    pack,
    pack_ids,
    unpack_ids,
)
from protocol.announce import HAVE_SLOTS_MAX

SLOT = 1_780_002_000


def ids(n: int, start: int = 0) -> list[bytes]:
    return [(start + i).to_bytes(16, "big") for i in range(n)]


def invalid(body: list[object]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(pack(body))
    assert info.value.reason == Reason.INVALID_MESSAGE


def test_round_trips() -> None:
    have = GossipHave((SlotIds(SLOT, pack_ids(ids(3))), SlotIds(SLOT + 900, pack_ids(ids(1, 9)))),
                      pack_ids(ids(2, 20)))
    assert decode_message(encode_message(have)) == have
    assert have.orders() == [(SLOT, i) for i in ids(3)] + [(SLOT + 900, ids(1, 9)[0])]
    assert have.cancels() == ids(2, 20)
    want = GossipWant(pack_ids(ids(2)), b"")
    assert decode_message(encode_message(want)) == want and want.orders() == ids(2) and want.cancels() == []
    assert decode_message(encode_message(GossipLink(False))) == GossipLink(False)
    assert unpack_ids(pack_ids(ids(5))) == ids(5)


def test_link_wire_form() -> None:
    assert encode_message(GossipLink(True)).hex() == "930133c3"
    invalid([1, GossipLink.TYPE, 1])  # a bool, not an int
    invalid([1, GossipLink.TYPE])
    invalid([1, GossipLink.TYPE, True, True])


@pytest.mark.parametrize("length", [1, 15, 17, 33])
def test_ids_are_whole_16_byte_ids(length: int) -> None:
    invalid([1, GossipHave.TYPE, [[SLOT, b"x" * length]], b""])
    invalid([1, GossipHave.TYPE, [], b"x" * length])
    invalid([1, GossipWant.TYPE, b"x" * length, b""])
    invalid([1, GossipWant.TYPE, b"", b"x" * length])


def test_have_limits() -> None:
    invalid([1, GossipHave.TYPE, [[SLOT, b""]], b""])  # a slot announces at least one order
    invalid([1, GossipHave.TYPE, [[-1, b"x" * 16]], b""])
    half = IDS_MAX // 2
    assert decode_message(pack([1, GossipHave.TYPE, [[SLOT, pack_ids(ids(half))]], pack_ids(ids(half, 1000))]))
    invalid([1, GossipHave.TYPE, [[SLOT, pack_ids(ids(half + 1))]], pack_ids(ids(half, 1000))])  # orders and cancels count together
    invalid([1, GossipHave.TYPE, [], pack_ids(ids(IDS_MAX + 1))])
    slots = [[SLOT + 900 * i, pack_ids(ids(1, i))] for i in range(HAVE_SLOTS_MAX + 1)]
    invalid([1, GossipHave.TYPE, slots, b""])
    assert decode_message(pack([1, GossipHave.TYPE, slots[:-1], b""]))


def test_want_limits_and_policing_cost() -> None:
    half = IDS_MAX // 2
    want = decode_message(pack([1, GossipWant.TYPE, pack_ids(ids(half)), pack_ids(ids(half, 1000))]))
    assert isinstance(want, GossipWant) and want.policing_cost() == IDS_MAX  # one per id asked for
    invalid([1, GossipWant.TYPE, pack_ids(ids(half + 1)), pack_ids(ids(half, 1000))])
    assert GossipWant(b"", b"").policing_cost() == 1
    assert GossipHave((), pack_ids(ids(100))).policing_cost() == 1


def test_categories() -> None:
    assert GossipLink.CATEGORY == "control"
    assert GossipHave.CATEGORY == GossipWant.CATEGORY == "gossip"
