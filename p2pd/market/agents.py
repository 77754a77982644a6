"""The rules of trading for others (S2, S3): agent takes, per-slot caps, fills.

An agent (a representative, or a prosumer for itself) signs
:class:`~protocol.AgentTerms`; the order's agent countersigns only within
both delegations (price bounds, Wh per slot, validity, revocation), and the
receipt carries both delegations so p2pd.market.disputes can prove a breach.
The life of each trade is p2pd/market/trade.py's state machine; this module
holds the checks. No I/O: ``now``, keys and ids are arguments.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from p2pd.market.delegations import Delegations
from p2pd.market.errors import Refusal
from protocol import (
    AgentOrder,
    AgentReceipt,
    AgentTerms,
    BoundsError,
    Credential,
    Delegation,
    MeterReport,
    Reason,
    SignatureError,
    check_delegation_bounds,
)

Used = Counter[tuple[str, str, int]]
"""Wh already traded per (principal, side, slot start), by this agent."""


def agent_receipt_parties(receipt: AgentReceipt) -> frozenset[str]:
    """Who may learn ``receipt`` by asking: the two agents that signed it."""
    return frozenset((receipt.terms.seller_agent, receipt.terms.buyer_agent))


def check_terms(t: AgentTerms, seller_d: Delegation | None, buyer_d: Delegation | None,
                delegations: Delegations, me: str, used: Used) -> None:
    """Both sides' delegation bounds, revocations, and our principals' per-slot caps.

    Raises :class:`Refusal`.
    """
    for side, d in (("sell", seller_d), ("buy", buyer_d)):
        try:
            check_delegation_bounds(t, side, d)
        except BoundsError as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        delegations.check(d)
        if d is not None and d.agent == me:
            principal = t.seller if side == "sell" else t.buyer
            if used[(principal, side, t.slot_start)] + t.wh > d.max_wh_per_slot:
                raise Refusal(Reason.OUT_OF_BOUNDS, "delegation's Wh per slot used up")


def check_agent_take(order: AgentOrder, t: AgentTerms, taker: Credential, taker_sig: bytes,
                     me: str, now: int) -> None:
    """The order's agent's checks of a take of its own ``order``. Raises :class:`Refusal`.

    The delegations are checked by :func:`check_terms`.
    """
    if (t.seller, t.seller_agent, t.slot_start, t.slot_len, t.price, t.broker) != (
            order.principal, me, order.slot_start, order.slot_len, order.price, ""):
        raise Refusal(Reason.OUT_OF_BOUNDS, "terms do not match the order")
    if t.buyer_agent != taker.member_id:
        raise Refusal(Reason.NOT_A_MEMBER, "the taker must be the buyer's agent")
    if t.buyer != t.buyer_agent and taker.role != "representative":
        raise Refusal(Reason.BAD_ROLE, "only a representative may buy for others")
    if now >= order.expiry:
        raise Refusal(Reason.EXPIRED, "order expired")
    try:
        t.verify(taker.sign_pk, taker_sig)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "taker signature does not verify") from exc


def wanted(clients: list[str], reports: Mapping[tuple[str, int], MeterReport],
           delegation_of: Mapping[str, Delegation | None], used: Used, slot_start: int,
           slot_len: int) -> dict[str, int]:
    """Per client: net Wh still to trade in the slot (sell > 0, buy < 0), from its reports.

    Capped by each client's delegation; what was already traded for it is
    subtracted, so a second pass never trades twice.
    """
    out = {}
    for principal in clients:
        r = reports.get((principal, slot_start))
        d = delegation_of.get(principal)
        if r is None or d is None or not d.covers(slot_start, slot_len) or r.net_wh == 0:
            continue
        side = "sell" if r.net_wh > 0 else "buy"
        left = min(abs(r.net_wh), d.max_wh_per_slot) - used[(principal, side, slot_start)]
        out[principal] = max(0, left) * (1 if side == "sell" else -1)
    return {k: v for k, v in out.items() if v}


def price_steps(wanted_wh: Mapping[str, int], delegation_of: Mapping[str, Delegation | None],
                ) -> dict[tuple[str, int], dict[str, int]]:
    """S3: clients grouped by (side, limit price): one aggregated order per step.

    Sell steps use each client's ``min_sell_price``, buy steps its
    ``max_buy_price`` (at least 1). Returns step -> allocation (client -> Wh).
    """
    steps: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for principal, net in wanted_wh.items():
        d = delegation_of.get(principal)
        assert d is not None
        if net > 0:
            steps[("sell", max(d.min_sell_price, 1))][principal] = net
        else:
            steps[("buy", max(d.max_buy_price, 1))][principal] = -net
    return dict(sorted(steps.items()))


def split_fill(alloc: dict[str, int], filled: int) -> dict[str, int]:
    """Split ``filled`` Wh of an aggregated order among clients, pro rata, in whole Wh.

    Floors each share, then gives the leftover Wh one each to the largest
    remainders (ties: member id), so the shares sum exactly to ``filled``
    and no client gets more than it asked for.
    """
    total = sum(alloc.values())
    if filled > total or filled < 0:
        raise ValueError("fill outside the order")
    shares = {m: wh * filled // total for m, wh in alloc.items()} if total else {}
    left = filled - sum(shares.values())
    for m in sorted(alloc, key=lambda m: (-(alloc[m] * filled % total), m))[:left]:
        shares[m] += 1
    return shares
