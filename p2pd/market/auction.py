"""The broker's auction (S3, S4) and the checks that keep a broker honest.

The broker clears each slot with a uniform-price double auction
(p2pd/market/clearing.py) over the orders submitted before gate closure;
:func:`terms_for` turns the result into each match's terms, with trade ids
derived from the book (:func:`trade_id_for`), so anyone who holds the
published book can re-run the auction (:func:`rerun`) and audit it
(:func:`audit_slot`). :func:`check_submit` is what the broker accepts into a
book; :func:`check_proposal` is what a party countersigns -- so a broker can
neither add a trade nobody ordered, move a price, nor overfill. Each match's
life on a party's node is p2pd/market/trade.py's state machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from p2pd.market.clearing import BookOrder, ClearingResult, book_hash, clear
from p2pd.market.errors import Refusal
from protocol import (
    AgentOrder,
    AgentReceipt,
    AgentTerms,
    BoundsError,
    ClearingSummary,
    Credential,
    Delegation,
    MatchPropose,
    Reason,
    SignatureError,
    check_delegation_bounds,
)

PARTY_ROLES = ("prosumer", "representative")


def trade_id_for(bhash: bytes, index: int) -> bytes:
    """Deterministic trade id of match ``index`` of a book: re-runs give the same ids."""
    return hashlib.blake2b(bhash + index.to_bytes(4, "big"), digest_size=16).digest()


def terms_for(result: ClearingResult, bhash: bytes, orders: dict[bytes, AgentOrder], broker: str,
              created_at: int) -> list[AgentTerms]:
    """The terms of every match of ``result``: what the broker proposes and what audits recompute."""
    out = []
    assert result.price is not None or not result.matches
    for i, m in enumerate(result.matches):
        s, b = orders[m.sell_id], orders[m.buy_id]
        out.append(AgentTerms(trade_id_for(bhash, i), s.principal, s.agent, b.principal, b.agent, broker,
                              s.order_id, b.order_id, s.slot_start, s.slot_len, m.wh,
                              result.price or 1, created_at))
    return out


def rerun(orders: list[AgentOrder]) -> tuple[bytes, ClearingResult]:
    """Anyone's re-run of a published book: (book hash, result)."""
    bhash = book_hash(o.encode() for o in orders)
    return bhash, clear([BookOrder(o.order_id, o.side, o.wh, o.price) for o in orders], bhash)



def check_submit(peer: Credential, o: AgentOrder, delegation: Delegation | None, *,
                 book: Mapping[bytes, AgentOrder] | None, closed: bool, slot_len: int,
                 gate_closure: int, now: int) -> None:
    """Whether the broker takes ``o`` (sent by ``peer``) into the slot's ``book``.

    Raises :class:`Refusal` naming the rule.
    """
    if peer.role not in PARTY_ROLES:
        raise Refusal(Reason.BAD_ROLE, f"a {peer.role} may not trade")
    if o.agent != peer.member_id:
        raise Refusal(Reason.NOT_A_MEMBER, "order not signed by the submitting member")
    try:
        o.verify(peer.sign_pk)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "order signature does not verify") from exc
    if (o.principal == o.agent) != (delegation is None):
        raise Refusal(Reason.NOT_A_MEMBER, "delegation missing or superfluous")
    if delegation is not None and (delegation.principal, delegation.agent) != (o.principal, o.agent):
        raise Refusal(Reason.NOT_A_MEMBER, "delegation names other members")
    if o.slot_len != slot_len:
        raise Refusal(Reason.OUT_OF_BOUNDS, "wrong slot length")
    if closed or now >= o.slot_start - gate_closure:
        raise Refusal(Reason.EXPIRED, "gate closed for that slot")
    if book is None:
        return
    if o.order_id in book:
        raise Refusal(Reason.REPLAY, "order id already in the book")
    # A member's bid at or above its own ask could be matched with itself (a
    # wash trade, and terms with seller == buyer). Pairs that do not cross
    # can never match each other, so only those that cross are refused.
    for other in book.values():
        if other.principal == o.principal and other.side != o.side:
            bid, ask = (o, other) if o.side == "buy" else (other, o)
            if bid.price >= ask.price:
                raise Refusal(Reason.OUT_OF_BOUNDS, "crosses the member's own order in this slot")


def check_proposal(broker: Credential, msg: MatchPropose, me: str,
                   own_order: Mapping[bytes, tuple[AgentOrder, Delegation | None, int]]) -> str:
    """Our side ("sell" or "buy") of a broker's proposal, or :class:`Refusal`.

    ``own_order`` maps our order ids to (order, delegation, Wh remaining).
    The rules that stop a cheating broker: the proposal is signed by the
    broker it names, draws on an order we signed and still hold, at a price
    within its limit, for no more than remains, within the delegation.
    """
    t = msg.terms
    if broker.role != "broker" or t.broker != broker.member_id:
        raise Refusal(Reason.BAD_ROLE, "proposal not from the broker it names")
    try:
        t.verify(broker.sign_pk, msg.broker_sig)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "broker signature does not verify") from exc
    side = "sell" if t.seller_agent == me else "buy" if t.buyer_agent == me else ""
    ref = t.seller_order if side == "sell" else t.buyer_order
    held = own_order.get(ref) if side else None
    if held is None:
        raise Refusal(Reason.NOT_FOUND, "no order of ours behind this match")
    o, delegation, remaining = held
    principal = t.seller if side == "sell" else t.buyer
    if (o.side, o.principal, o.slot_start, o.slot_len) != (side, principal, t.slot_start, t.slot_len):
        raise Refusal(Reason.OUT_OF_BOUNDS, "match does not fit our order")
    if (side == "sell" and t.price < o.price) or (side == "buy" and t.price > o.price):
        raise Refusal(Reason.OUT_OF_BOUNDS, f"price {t.price} beyond our limit {o.price}")
    if t.wh > remaining:
        raise Refusal(Reason.INSUFFICIENT, f"only {remaining} Wh remain", remaining)
    try:
        check_delegation_bounds(t, side, delegation)
    except BoundsError as exc:
        raise Refusal(exc.reason, str(exc)) from exc
    return side


def match_parties(receipt: AgentReceipt) -> frozenset[str]:
    """Who may learn a match's receipt: its two agents."""
    return frozenset((receipt.terms.seller_agent, receipt.terms.buyer_agent))


@dataclass
class Audit:
    ok: bool
    problems: list[str]


def audit_slot(orders: list[AgentOrder], summary: ClearingSummary, broker: Credential,
               receipts: list[AgentReceipt], me: str) -> Audit:
    """Re-run a published book and compare with the summary and our receipts.

    Flags a summary that does not match the book, and any match of ours in
    the re-run that we hold no receipt for (a dropped trade), or a receipt of
    ours that is not in the re-run (an added one).
    """
    problems = []
    try:
        summary.verify(broker.sign_pk)
    except SignatureError:
        problems.append("summary not signed by the broker")
    bhash, result = rerun(orders)
    if bhash != summary.book_hash:
        problems.append("published book does not hash to the summary's book hash")
    if result.result_hash() != summary.result_hash:
        problems.append("re-run clearing differs from the broker's result")
    expected = {t.trade_id: t for t in terms_for(result, bhash, {o.order_id: o for o in orders},
                                                   summary.broker, 0)
                if me in (t.seller_agent, t.buyer_agent)}
    held = {r.terms.trade_id: r.terms for r in receipts if r.terms.slot_start == summary.slot_start}
    for tid in expected.keys() - held.keys():
        problems.append(f"match {tid.hex()} of ours missing (dropped by the broker, or refused)")
    for tid in held.keys() - expected.keys():
        problems.append(f"receipt {tid.hex()} is not in the re-run clearing")
    for tid in expected.keys() & held.keys():
        a, b = expected[tid], held[tid]
        if (a.wh, a.price, a.seller, a.buyer) != (b.wh, b.price, b.seller, b.buyer):
            problems.append(f"receipt {tid.hex()} differs from the re-run clearing")
    return Audit(not problems, problems)
