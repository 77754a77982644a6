"""Store records of S1 receipts and orders, and the commit step of the trade state machine.

Shared by both sides of a take (p2pd/roles/trading.py, taking.py) and by
reconciliation (reconcile.py).
"""

from __future__ import annotations

from p2pd.market.errors import Refusal
from p2pd.market.trade import CommitDecision, Trade
from protocol import Order, Reason, Receipt, TradeTerms
from store import Duplicate, Insufficient, OrderRecord, Outcome, ReceiptRecord


def receipt_record(receipt: Receipt, created_at: int) -> ReceiptRecord:
    t = receipt.terms
    return ReceiptRecord(
        trade_id=t.trade_id, order_id=t.order_id, seller=t.seller, buyer=t.buyer,
        slot_start=t.slot_start, slot_len=t.slot_len, wh=t.wh, price=t.price,
        order_wh=t.order_wh, encoded=receipt.encode(), created_at=created_at,
    )


def order_record(order: Order, cancelled: bool = False) -> OrderRecord:
    return OrderRecord(
        order_id=order.order_id, member_id=order.member_id, side=order.side,
        slot_start=order.slot_start, slot_len=order.slot_len, wh=order.wh,
        price=order.price, expiry=order.expiry, encoded=order.encode(), cancelled=cancelled,
    )


def commit_outcome(trade: Trade[Receipt], outcome: Outcome) -> CommitDecision[Receipt]:
    """Feed the store's answer to ``trade`` (p2pd/market/trade.py, Rule 2)."""
    if isinstance(outcome, Insufficient):
        refused = trade.refuse(Refusal(Reason.INSUFFICIENT, f"only {outcome.remaining_wh} Wh remain",
                                       outcome.remaining_wh))
        return CommitDecision(refused, False)
    if isinstance(outcome, Duplicate):
        return trade.committed(Receipt.decode(outcome.receipt.encoded), fresh=False)
    assert trade.receipt is not None
    return trade.committed(trade.receipt, fresh=True)


def receipt_parties_of_terms(terms: TradeTerms) -> frozenset[str]:
    return frozenset((terms.seller, terms.buyer))
