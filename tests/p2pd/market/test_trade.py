"""The trade state machine (p2pd/market/trade.py): plain synchronous tests."""

from __future__ import annotations

import pytest

from p2pd.market.errors import Refusal
from p2pd.market.trade import (
    TRANSITIONS,
    Accepted,
    IllegalTransition,
    Refused,
    Side,
    TradeLedger,
    TradeState,
    answer_from_store,
)
from protocol import Reason

# A receipt stand-in: (trade id, seller, buyer).
Rcpt = tuple[bytes, str, str]


def parties(r: Rcpt) -> frozenset[str]:
    return frozenset(r[1:])


def ledger() -> TradeLedger[Rcpt]:
    return TradeLedger(parties, keep_s=100)


def test_owner_path_countersign_commit_answer() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"alice", "bob"}), now=0)
    assert t.state is TradeState.PROPOSED and t.answer_for("bob") is None
    receipt = (b"t1", "alice", "bob")
    t.countersigned(receipt)
    assert t.state is TradeState.COUNTERSIGNED and t.answer_for("bob") is None  # not durable yet
    decision = t.committed(receipt, fresh=True)
    assert decision.fresh and decision.answer == Accepted(receipt)
    assert t.answer_for("bob") == Accepted(receipt) and t.answer_for("alice") == Accepted(receipt)


def test_a_stranger_never_learns_a_receipt() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"alice", "bob"}), now=0)
    t.countersigned((b"t1", "alice", "bob"))
    t.committed((b"t1", "alice", "bob"), fresh=True)
    assert t.answer_for("mallory") == Refused(Reason.REPLAY, "trade id already used")


def test_duplicate_commit_answers_the_stored_receipt_and_records_nothing() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"alice", "bob"}), now=0)
    t.countersigned((b"t1", "alice", "bob"))
    stored = (b"t1", "alice", "bob")  # e.g. committed before a restart, other terms
    decision = t.committed(stored, fresh=False)
    assert decision.answer == Accepted(stored) and not decision.fresh


def test_duplicate_of_someone_elses_trade_is_replay() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"alice", "mallory"}), now=0)
    t.countersigned((b"t1", "alice", "mallory"))
    decision = t.committed((b"t1", "alice", "bob"), fresh=False)
    assert decision.answer == Refused(Reason.REPLAY, "trade id already used") and not decision.fresh
    assert t.state is TradeState.REFUSED


def test_refusal_is_final_and_answered_again() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"alice", "bob"}), now=0)
    t.countersigned((b"t1", "alice", "bob"))
    refused = t.refuse(Refusal(Reason.INSUFFICIENT, "only 5 Wh remain", 5))
    assert refused == Refused(Reason.INSUFFICIENT, "only 5 Wh remain", 5)
    assert t.answer_for("bob") == refused
    with pytest.raises(IllegalTransition):
        t.committed((b"t1", "alice", "bob"), fresh=True)


@pytest.mark.parametrize("state", list(TradeState))
def test_every_illegal_transition_raises(state: TradeState) -> None:
    trades = ledger()
    t = trades.open(b"t", Side.TAKER, frozenset({"a", "b"}), now=0)
    t.state = state
    for target in set(TradeState) - TRANSITIONS[state]:
        with pytest.raises(IllegalTransition):
            t._set(target)


def test_ledger_refuses_a_second_trade_under_one_id_and_prunes_finished() -> None:
    trades = ledger()
    t = trades.open(b"t1", Side.OWNER, frozenset({"a", "b"}), now=0)
    with pytest.raises(Refusal) as info:
        trades.open(b"t1", Side.OWNER, frozenset({"a", "c"}), now=1)
    assert info.value.reason is Reason.REPLAY
    live = trades.open(b"t2", Side.OWNER, frozenset({"a", "b"}), now=0)
    t.refuse(Refusal(Reason.NOT_FOUND, "gone"))
    assert trades.prune(now=50) == 0  # kept for retries a while
    assert trades.prune(now=101) == 1 and trades.get(b"t1") is None
    assert trades.get(b"t2") is live  # in progress: never pruned


def test_answer_from_store_for_retries_after_restart() -> None:
    missing = Refusal(Reason.NOT_FOUND, "no live order of ours with that id")
    stored = (b"t1", "alice", "bob")
    assert answer_from_store(stored, "bob", parties, missing=missing) == Accepted(stored)
    assert answer_from_store(stored, "mallory", parties, missing=missing).reason is Reason.REPLAY  # type: ignore[union-attr]
    assert answer_from_store(None, "bob", parties, missing=missing) == Refused(
        Reason.NOT_FOUND, "no live order of ours with that id")
