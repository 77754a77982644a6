"""The rules of a relayed take (docs/protocol.md §12.9), for its three parties.

* The owner checks the taker it has no session with: :func:`relayed_taker`.
* A relay forwards only its own peer's takes, once, to an owner it has a
  session with, and an answer only back along a take it forwarded, from that
  take's owner: :class:`RelayTable` (bounded).
* The taker accepts only an answer the owner signed: the receipt
  (p2pd/market/take.py's ``check_answer``) or :func:`check_relayed_refusal`.

No I/O: ``now`` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pd.market.errors import Refusal
from p2pd.market.take import BadAnswer
from protocol import (
    Credential,
    CredentialError,
    Reason,
    RelayedAnswer,
    RelayedTake,
    SignatureError,
    TradeRefusal,
    TrustPolicy,
)

MAX_RELAYED = 256
"""Takes a relay has forwarded and still waits an answer for, all takers together."""
MAX_RELAYED_PER_TAKER = 16
"""... of which one taker may have at most this many."""
RELAY_KEEP = 120.0
"""Seconds a relay waits for the owner's answer to a take it forwarded."""


def relayed_taker(msg: RelayedTake, policy: TrustPolicy, owner: str, now: float) -> Credential:
    """The taker of a take relayed to us (``owner``), checked. Raises :class:`Refusal`.

    Its credential must pass the checks of section 6.3 (trusted issuer,
    community, validity, not revoked) and name the take's other party.
    """
    cred = msg.credential
    try:
        policy.check(cred, now)
    except CredentialError as exc:
        raise Refusal(exc.reason, f"taker's credential: {exc}") from exc
    terms = msg.terms
    if cred.member_id == owner or cred.member_id not in (terms.seller, terms.buyer):
        raise Refusal(Reason.NOT_A_MEMBER, "the credential is not the taker's")
    return cred


def check_relayed_refusal(refusal: TradeRefusal, trade_id: bytes, owner: str, owner_sign_pk: bytes) -> None:
    """A relayed refusal must be the owner's, for our take, and signed by it. Raises :class:`BadAnswer`."""
    if refusal.trade_id != trade_id or refusal.owner != owner:
        raise BadAnswer(Reason.PROTOCOL_ERROR, "refusal of another take or by another member")
    try:
        refusal.verify(owner_sign_pk)
    except SignatureError as exc:
        raise BadAnswer(Reason.BAD_SIGNATURE, "refusal does not verify: owner's signature") from exc


@dataclass
class _Forwarded:
    taker: str
    owner: str
    until: float


@dataclass
class RelayTable:
    """A relay's takes on their way: which may go, and where each answer goes back."""

    limit: int = MAX_RELAYED
    per_taker: int = MAX_RELAYED_PER_TAKER
    keep: float = RELAY_KEEP
    forwarded: dict[bytes, _Forwarded] = field(default_factory=dict)

    def admit(self, msg: RelayedTake, sender: str, now: float) -> str | None:
        """None if ``msg``, received from ``sender``, may be forwarded (it is then
        remembered); else why not, as a counter name's suffix.

        Rules: one relay at most (``hops`` must be 1: it is 0 once
        forwarded); the sender must be the taker whose credential it carries
        (a relay forwards its own peers' takes only, never another relay's);
        the owner is not the sender; bounded in flight, overall and per taker.
        A retry of a take (same trade id, same taker) is forwarded again.
        """
        if msg.hops < 1:
            return "hops"
        if msg.credential.member_id != sender:
            return "not_the_taker"
        if msg.owner == sender:
            return "to_itself"
        self.expire(now)
        tid = msg.terms.trade_id
        known = self.forwarded.get(tid)
        if known is not None:
            if known.taker != sender or known.owner != msg.owner:
                return "trade_id_taken"
            known.until = now + self.keep
            return None
        if len(self.forwarded) >= self.limit:
            return "full"
        if sum(1 for f in self.forwarded.values() if f.taker == sender) >= self.per_taker:
            return "taker_full"
        self.forwarded[tid] = _Forwarded(sender, msg.owner, now + self.keep)
        return None

    def answer(self, msg: RelayedAnswer, sender: str, now: float) -> str | None:
        """The member to forward ``msg`` to: the taker of a take we forwarded to
        ``sender``; None if it answers no such take (then it is not ours to pass on)."""
        self.expire(now)
        known = self.forwarded.get(msg.trade_id)
        if known is None or known.owner != sender:
            return None
        del self.forwarded[msg.trade_id]
        return known.taker

    def expire(self, now: float) -> None:
        for tid in [t for t, f in self.forwarded.items() if f.until <= now]:
            del self.forwarded[tid]
