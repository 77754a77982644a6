"""The rules of a relayed take (p2pd/market/relay.py): plain synchronous tests."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import NOW, Community

from p2pd.market.errors import Refusal
from p2pd.market.relay import RelayTable, check_relayed_refusal, relayed_taker
from p2pd.market.take import BadAnswer
from protocol import Reason, RelayedAnswer, RelayedTake, TradeRefusal, TradeTerms

T = int(NOW)
COM = Community()
ALICE, BOB, CAROL = COM.member("alice"), COM.member("bob"), COM.member("carol")


def take(tid: bytes = b"t" * 16, taker=BOB, owner: str = "alice", hops: int = 1) -> RelayedTake:  # type: ignore[no-untyped-def]
    terms = TradeTerms(tid, b"o" * 16, 1000, owner, taker.member_id, (T // 900 + 4) * 900, 900, 400,
                       90_000, T)
    return RelayedTake(owner, hops, taker.credential, terms, terms.sign(taker.signing))


def refusal(tid: bytes = b"t" * 16, signer=ALICE, owner: str = "alice") -> TradeRefusal:  # type: ignore[no-untyped-def]
    return TradeRefusal.create(signer.signing, trade_id=tid, owner=owner, reason=int(Reason.INSUFFICIENT),
                               remaining_wh=5, message="only 5 Wh remain")


def test_the_owner_checks_the_taker_it_never_met() -> None:
    assert relayed_taker(take(), COM.policy(), "alice", T) == BOB.credential
    with pytest.raises(Refusal) as other:  # carol's credential on bob's take
        relayed_taker(RelayedTake("alice", 0, CAROL.credential, take().terms, take().taker_sig),
                      COM.policy(), "alice", T)
    assert other.value.reason == Reason.NOT_A_MEMBER
    COM.revoked.add("bob")
    try:
        with pytest.raises(Refusal) as revoked:
            relayed_taker(take(), COM.policy(), "alice", T)
        assert revoked.value.reason == Reason.REVOKED
    finally:
        COM.revoked.discard("bob")
    stranger = Community().member("bob")  # another issuer's bob
    with pytest.raises(Refusal) as untrusted:
        relayed_taker(take(taker=stranger), COM.policy(), "alice", T)
    assert untrusted.value.reason == Reason.UNTRUSTED_ISSUER


def test_a_relayed_refusal_must_be_the_owners() -> None:
    check_relayed_refusal(refusal(), b"t" * 16, "alice", ALICE.signing.public)
    for bad, tid, reason in ((refusal(signer=CAROL), b"t" * 16, Reason.BAD_SIGNATURE),
                             (refusal(owner="carol", signer=CAROL), b"t" * 16, Reason.PROTOCOL_ERROR),
                             (refusal(), b"u" * 16, Reason.PROTOCOL_ERROR)):
        with pytest.raises(BadAnswer) as err:
            check_relayed_refusal(bad, tid, "alice", ALICE.signing.public)
        assert err.value.reason == reason


def test_the_relay_forwards_a_peers_own_take_once_and_its_answer_back() -> None:
    table = RelayTable()
    assert table.admit(take(hops=0), "bob", T) == "hops"
    assert table.admit(take(), "carol", T) == "not_the_taker"
    t = take()
    assert table.admit(RelayedTake("bob", 1, BOB.credential, t.terms, t.taker_sig), "bob", T) == "to_itself"
    assert table.admit(take(), "bob", T) is None
    assert table.admit(take(), "bob", T + 1) is None  # a retry goes again
    answer = RelayedAnswer(b"t" * 16, None, refusal())
    assert table.answer(answer, "carol", T) is None  # only the owner answers
    assert table.answer(answer, "alice", T) == "bob"
    assert table.answer(answer, "alice", T) is None  # once
    assert table.answer(RelayedAnswer(b"z" * 16, None, refusal(b"z" * 16)), "alice", T) is None


def test_the_relay_is_bounded_overall_per_taker_and_in_time() -> None:
    table = RelayTable(limit=3, per_taker=2, keep=60)
    assert [table.admit(take(bytes([i]) * 16), "bob", T) for i in range(3)] == [None, None, "taker_full"]
    assert table.admit(take(b"c" * 16, taker=CAROL, owner="alice"), "carol", T) is None
    assert table.admit(take(b"d" * 16, taker=CAROL), "carol", T) == "full"
    # Another taker cannot take over a trade id in flight.
    assert table.admit(take(b"\x00" * 16, taker=CAROL), "carol", T) == "trade_id_taken"
    # Unanswered takes are forgotten after ``keep``: room again, and their answers go nowhere.
    assert table.admit(take(b"d" * 16, taker=CAROL), "carol", T + 61) is None
    assert table.answer(RelayedAnswer(b"\x00" * 16, None, refusal(b"\x00" * 16)), "alice", T + 61) is None
