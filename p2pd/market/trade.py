"""One trade's life, for every path that makes a receipt: a state machine.

Three flows make receipts (docs/protocol.md sections 12 and 15):

* **S1 take**: the taker signs terms and sends ``Take``; the order's owner
  countersigns, commits, answers ``TradeAccepted``/``TradeRefused``; the
  taker checks the receipt and commits it too.
* **S2 agent take**: the same between agents (``AgentTake``,
  ``AgentAccepted``/``AgentRefused``).
* **Broker match** (S3, S4): the broker proposes terms to both parties
  (``MatchPropose``); each party countersigns (``MatchSign``); the receipt
  with all signatures (``MatchFinal``, or the parties' signatures exchanged
  directly after a broker crash) is committed by each party.

Each is one :class:`Trade` per trade id and side, in one of four states::

    PROPOSED --countersigned--> COUNTERSIGNED --committed--> COMMITTED
        |                            |
        +-------- refused -----------+--------------------> REFUSED

Rule 1 (idempotent by trade id): a trade id names one trade forever. A
request that names a known trade id creates nothing: it gets that trade's
answer (:meth:`Trade.answer_for`) -- the committed receipt if the asker is
one of its parties, ``REPLAY`` otherwise.

Rule 2 (only what was committed is recorded): :meth:`Trade.committed` says
whether this transition stored the receipt now (``fresh``). Logs, events and
counters record a receipt only then; a store that reports the trade id as
stored before (a retry, a race) records nothing new, and answers with the
*stored* receipt, never the one just built.

Rule 3 (durable first): an answer that reveals a receipt exists only once the
trade is COMMITTED, i.e. after the caller's store reported the commit.

This module decides; the callers (p2pd/roles/) do the awaits: they send,
commit through the store and report back. No I/O, no clock, no randomness.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pd.market.errors import Refusal
from protocol import Reason

R = TypeVar("R")
"""The receipt type of a flow: ``protocol.Receipt`` (S1) or ``protocol.AgentReceipt``."""


class TradeState(enum.Enum):
    PROPOSED = "proposed"
    COUNTERSIGNED = "countersigned"
    COMMITTED = "committed"
    REFUSED = "refused"


# Rule table, as h11's _state.py: every state change goes through it.
TRANSITIONS: dict[TradeState, frozenset[TradeState]] = {
    TradeState.PROPOSED: frozenset({TradeState.COUNTERSIGNED, TradeState.REFUSED}),
    TradeState.COUNTERSIGNED: frozenset({TradeState.COMMITTED, TradeState.REFUSED}),
    TradeState.COMMITTED: frozenset(),
    TradeState.REFUSED: frozenset(),
}


class Side(enum.Enum):
    """Which part this node plays in the trade."""

    OWNER = "owner"  # countersigns a taker's terms and commits first (S1, S2)
    TAKER = "taker"  # proposed the terms; commits what the owner answered
    PARTY = "party"  # one of the two parties of a broker's match


class IllegalTransition(Exception):
    """Raised when a caller asks for a state change the rule table forbids (our bug)."""


@dataclass(frozen=True)
class Accepted(Generic[R]):
    """Answer: the trade is committed; ``receipt`` is the one stored."""

    receipt: R


@dataclass(frozen=True)
class Refused:
    """Answer: the trade is refused for ``reason`` (``remaining_wh`` for INSUFFICIENT)."""

    reason: Reason
    message: str
    remaining_wh: int = 0


Answer = Accepted[R] | Refused


@dataclass(frozen=True)
class CommitDecision(Generic[R]):
    """What :meth:`Trade.committed` decided: the answer, and whether to record it."""

    answer: Accepted[R] | Refused
    fresh: bool
    """True only when this commit stored the receipt now: record it (Rule 2)."""


@dataclass(eq=False)
class Trade(Generic[R]):
    """One trade as one node sees it. Create through :class:`TradeLedger`.

    ``parties`` are the members allowed to learn the receipt (seller and
    buyer, or their agents); ``parties_of`` reads them from a stored receipt,
    which after a duplicate commit may be another trade's.
    """

    trade_id: bytes
    side: Side
    parties: frozenset[str]
    parties_of: Callable[[R], frozenset[str]]
    opened_at: float
    state: TradeState = TradeState.PROPOSED
    receipt: R | None = None
    refusal: Refused | None = None
    attempts: int = 0
    """Times the proposal was sent (taker side): retries reuse the same terms."""

    def _set(self, new: TradeState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"trade {self.trade_id.hex()}: {self.state.value} -> {new.value}")
        self.state = new

    @property
    def finished(self) -> bool:
        return self.state in (TradeState.COMMITTED, TradeState.REFUSED)

    def countersigned(self, receipt: R | None) -> None:
        """Our signature is on the trade; what it makes must now be committed.

        Owner: after checking the taker's terms and signing (``receipt`` is
        the one to commit). Taker: after checking the owner's answer. Party:
        after signing the broker's proposal (``None``: the final receipt, with
        the other signatures, comes with :meth:`committed`).
        """
        self._set(TradeState.COUNTERSIGNED)
        self.receipt = receipt

    def refuse(self, refusal: Refusal | Refused) -> Refused:
        """End the trade refused (by our rules, the store or the other side)."""
        answer = refusal if isinstance(refusal, Refused) else Refused(
            refusal.reason, refusal.message, refusal.remaining_wh)
        self._set(TradeState.REFUSED)
        self.refusal = answer
        return answer

    def committed(self, stored: R, *, fresh: bool) -> CommitDecision[R]:
        """The store holds ``stored`` under this trade id (``fresh``: stored just now).

        A duplicate (``fresh=False``) answers with the stored receipt, but
        only to its own parties (Rule 1): a stranger reusing someone's trade
        id is refused with REPLAY and learns nothing.
        """
        if not fresh and not (self.parties <= self.parties_of(stored)):
            return CommitDecision(self.refuse(Refused(Reason.REPLAY, "trade id already used")), False)
        self._set(TradeState.COMMITTED)
        self.receipt = stored
        return CommitDecision(Accepted(stored), fresh)

    def answer_for(self, asker: str) -> Answer[R] | None:
        """What to tell ``asker`` about this trade now; None while it is in progress.

        Only a party learns the receipt; anyone else gets REPLAY.
        """
        if asker not in self.parties:
            return Refused(Reason.REPLAY, "trade id already used")
        if self.state is TradeState.COMMITTED:
            assert self.receipt is not None
            return Accepted(self.receipt)
        return self.refusal


def answer_from_store(stored: R | None, asker: str, parties_of: Callable[[R], frozenset[str]],
                      *, missing: Refusal) -> Answer[R]:
    """The answer for a trade id this node knows only from its store.

    After a restart, an order's expiry or a sell-out, a retry of a committed
    trade still gets its receipt (Rule 1), but only if ``asker`` is a party;
    without a stored receipt, ``missing`` is the refusal (e.g. NOT_FOUND).
    """
    if stored is None:
        return Refused(missing.reason, missing.message, missing.remaining_wh)
    if asker not in parties_of(stored):
        return Refused(Reason.REPLAY, "trade id already used")
    return Accepted(stored)


@dataclass
class TradeLedger(Generic[R]):
    """The trades in progress or recently finished, by trade id (Rule 1).

    Finished trades are kept ``keep_s`` seconds (``now`` is always passed in)
    so a retry finds its answer without a store lookup; after that the store
    answers (:func:`answer_from_store`).
    """

    parties_of: Callable[[R], frozenset[str]]
    keep_s: float = 600.0
    trades: dict[bytes, Trade[R]] = field(default_factory=dict)

    def get(self, trade_id: bytes) -> Trade[R] | None:
        return self.trades.get(trade_id)

    def open(self, trade_id: bytes, side: Side, parties: frozenset[str], now: float) -> Trade[R]:
        """A new trade. Raises :class:`Refusal` (REPLAY) if the id is known already."""
        if trade_id in self.trades:
            raise Refusal(Reason.REPLAY, "trade id already in use")
        trade: Trade[R] = Trade(trade_id, side, parties, self.parties_of, now)
        self.trades[trade_id] = trade
        return trade

    def forget(self, trade_id: bytes) -> None:
        self.trades.pop(trade_id, None)

    def prune(self, now: float) -> int:
        """Forget finished trades older than ``keep_s``; returns how many."""
        old = [tid for tid, t in self.trades.items() if t.finished and now - t.opened_at > self.keep_s]
        for tid in old:
            del self.trades[tid]
        return len(old)

    def __iter__(self) -> Iterator[Trade[R]]:
        return iter(self.trades.values())

    def __len__(self) -> int:
        return len(self.trades)
