"""The rules of an S1 take, for both sides (docs/protocol.md section 12).

The taker builds signed terms against a live order (:func:`terms_for_take`)
and, when the owner answers, checks the receipt (:func:`check_answer`). The
owner checks the terms against its own order (:func:`check_take`) and
countersigns (:func:`countersign`). What happens to the trade in between is
the state machine of p2pd/market/trade.py. No I/O: keys, ids and ``now``
are arguments.
"""

from __future__ import annotations

from p2pd.market.book import BookEntry
from p2pd.market.errors import MarketError, Refusal
from protocol import (
    LocalProtocolError,
    Order,
    Reason,
    Receipt,
    SignatureError,
    SigningKey,
    TradeTerms,
    parties,
)


class BadAnswer(MarketError):
    """Raised when the owner's answer to our take breaks the protocol (the peer's fault).

    ``reason`` is BAD_SIGNATURE (a signature does not verify, or ours is not
    the one we sent) or PROTOCOL_ERROR (the receipt holds other terms).
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def receipt_parties(receipt: Receipt) -> frozenset[str]:
    """Who may learn ``receipt``: its seller and buyer."""
    return frozenset((receipt.terms.seller, receipt.terms.buyer))


def terms_for_take(entry: BookEntry, me: str, trade_id: bytes, wh: int, now: int,
                   owner: str | None = None) -> TradeTerms:
    """The terms of our take of ``wh`` from ``entry``'s order. Raises :class:`Refusal`.

    ``owner`` is the member behind a pseudonymous order, as it proved
    (docs/protocol.md 12.8); by default the order's ``member_id``.
    """
    order = entry.order
    owner = order.member_id if owner is None else owner
    if owner == me:
        raise Refusal(Reason.BAD_ROLE, "cannot take our own order")
    seller, buyer = parties(order, me, owner)
    terms = TradeTerms(trade_id, order.order_id, order.wh, seller, buyer, order.slot_start,
                       order.slot_len, wh, order.price, now)
    try:
        terms.validate()
    except LocalProtocolError as exc:
        raise Refusal(Reason.OUT_OF_BOUNDS, f"invalid take: {exc}") from exc
    return terms


def check_answer(terms: TradeTerms, receipt: Receipt, our_sig: bytes, owner: str,
                 owner_sign_pk: bytes) -> None:
    """The owner's receipt must hold our terms, our signature and a valid one of its own.

    Our own signature is compared byte for byte with what we sent; only the
    owner's needs a verify (two signs and two verifies per trade). Raises
    :class:`BadAnswer`.
    """
    if receipt.terms != terms:
        raise BadAnswer(Reason.PROTOCOL_ERROR, "owner answered with other terms")
    owner_is_seller = terms.seller == owner
    ours, theirs = ((receipt.buyer_sig, receipt.seller_sig) if owner_is_seller
                    else (receipt.seller_sig, receipt.buyer_sig))
    if ours != our_sig:
        raise BadAnswer(Reason.BAD_SIGNATURE, "receipt does not carry our signature")
    try:
        terms.verify(owner_sign_pk, theirs)
    except SignatureError as exc:
        raise BadAnswer(Reason.BAD_SIGNATURE, "receipt does not verify: owner's signature") from exc


def check_take(order: Order, terms: TradeTerms, taker: str, taker_sign_pk: bytes, taker_sig: bytes,
               now: int, owner: str | None = None) -> None:
    """The owner's checks of a take against its own live ``order``. Raises :class:`Refusal`.

    ``owner`` is our member id when ``order`` is one of our pseudonymous orders.
    """
    seller, buyer = parties(order, taker, owner)
    expected = (order.order_id, order.wh, seller, buyer, order.slot_start, order.slot_len, order.price)
    got = (terms.order_id, terms.order_wh, terms.seller, terms.buyer, terms.slot_start,
           terms.slot_len, terms.price)
    if got != expected:
        raise Refusal(Reason.OUT_OF_BOUNDS, "terms do not match the order")
    try:
        terms.verify(taker_sign_pk, taker_sig)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "taker signature does not verify") from exc
    if order.expiry <= now:
        raise Refusal(Reason.EXPIRED, "order has expired")


def countersign(terms: TradeTerms, key: SigningKey, me: str, taker_sig: bytes) -> Receipt:
    """The receipt of a checked take: our signature next to the taker's."""
    own = terms.sign(key)
    return Receipt(terms, own, taker_sig) if terms.seller == me else Receipt(terms, taker_sig, own)
