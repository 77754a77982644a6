"""Pseudonymous S1 orders, the rules (docs/protocol.md 12.8): epoch keys, wallet, reveals.

* :class:`EpochKeyRing` -- the issuers' epoch keys a node accepts: from a
  trusted issuer, for our community, for an epoch near now.
* :class:`Wallet` -- a member's pseudonyms: drawn from the issuer in blinded
  batches, one used per order, their keys kept (derived from a secret) so the
  owner can sign its order and cancel, open sealed intents and prove
  ownership.
* :func:`check_anon_order` -- what the book checks of a pseudonymous order.

No I/O: ``now`` and random bytes are arguments; the trio side is
p2pd/roles/anon.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pd.market.errors import Refusal
from p2pd.market.rules import MarketRules
from protocol import (
    CredentialError,
    EpochKey,
    Order,
    Pseudonym,
    PseudonymKeys,
    PseudonymRequest,
    Reason,
    SignatureError,
    check_pseudonym,
    epoch_of,
    finish_pseudonym,
    request_pseudonym,
)

KEEP_EPOCHS_BEHIND = 3  # a pseudonym of epoch E is good until (E+1) days + max_ahead (2 days)
KEEP_EPOCHS_AHEAD = 2  # issuers publish keys a day or two early


@dataclass
class EpochKeyRing:
    """Epoch keys by epoch, each checked once when offered."""

    community: str
    trusted_issuers: frozenset[bytes]
    keys: dict[int, EpochKey] = field(default_factory=dict)

    def offer(self, key: EpochKey, now: float) -> bool:
        """Hold ``key`` if it is new and acceptable; True if it was added now."""
        if self.keys.get(key.epoch) == key:
            return False
        if key.issuer_pk not in self.trusted_issuers or key.community != self.community:
            return False
        epoch = epoch_of(now)
        if not epoch - KEEP_EPOCHS_BEHIND <= key.epoch <= epoch + KEEP_EPOCHS_AHEAD:
            return False
        if key.epoch in self.keys:
            return False  # one key per epoch: the first wins (a second is the issuer's mistake)
        try:
            key.verify_signature()
        except SignatureError:
            return False
        self.keys[key.epoch] = key
        return True

    def current(self, now: float) -> list[EpochKey]:
        """The keys worth telling a new peer about (not yet pruned), oldest first."""
        return [self.keys[e] for e in sorted(self.keys) if e >= epoch_of(now) - KEEP_EPOCHS_BEHIND]

    def prune(self, now: float) -> None:
        for e in [e for e in self.keys if e < epoch_of(now) - KEEP_EPOCHS_BEHIND]:
            del self.keys[e]


def check_anon_order(order: Order, pseudonym: Pseudonym, ring: EpochKeyRing | None, rules: MarketRules,
                     now: int) -> None:
    """Raise :class:`Refusal` unless ``order`` is a valid order of ``pseudonym`` (not its terms)."""
    if ring is None:
        raise Refusal(Reason.UNTRUSTED_ISSUER, "this node takes no pseudonymous orders")
    try:
        check_pseudonym(pseudonym, ring.keys, community=ring.community, now=now,
                        max_ahead=rules.max_ahead)
    except CredentialError as exc:
        raise Refusal(exc.reason, f"order pseudonym: {exc}") from exc
    if order.member_id != pseudonym.member_id or order.order_id != pseudonym.order_id:
        raise Refusal(Reason.NOT_A_MEMBER, "order does not belong to its pseudonym")
    try:
        order.verify(pseudonym.sign_pk)
    except SignatureError as exc:
        raise Refusal(Reason.BAD_SIGNATURE, "order signature does not verify") from exc


@dataclass(frozen=True)
class Owned:
    """One of our pseudonyms: the certificate and its private keys."""

    pseudonym: Pseudonym
    keys: PseudonymKeys


@dataclass
class Wallet:
    """A member's pseudonyms (docs/protocol.md 12.8).

    ``secret`` (32 bytes) derives every pseudonym's keys; ``batch`` is how
    many a refill asks for. :meth:`draw` hands out an unused pseudonym of the
    current epoch; :meth:`requests` and :meth:`add` are the two halves of a
    refill with the issuer. Used pseudonyms stay in ``owned`` (by order id)
    while their order may live.
    """

    secret: bytes
    batch: int = 16
    unused: dict[int, list[Owned]] = field(default_factory=dict)
    owned: dict[bytes, Owned] = field(default_factory=dict)
    drawn: dict[int, int] = field(default_factory=dict)  # epoch -> keys index used so far

    def draw(self, now: float) -> Owned | None:
        """An unused pseudonym of ``now``'s epoch, now ours to use; None if a refill is needed."""
        pool = self.unused.get(epoch_of(now))
        if not pool:
            return None
        owned = pool.pop(0)
        self.owned[owned.pseudonym.order_id] = owned
        return owned

    def requests(self, key: EpochKey, random: Callable[[int], bytes]) -> list[PseudonymRequest]:
        """A batch of blinded requests for ``key``'s epoch (keys derived from fresh indices)."""
        out: list[PseudonymRequest] = []
        for _ in range(2 * self.batch):  # a failed draw is negligibly rare; bounded anyway
            if len(out) >= self.batch:
                break
            index = self.drawn.get(key.epoch, 0)
            self.drawn[key.epoch] = index + 1
            keys = PseudonymKeys.derive(self.secret, key.epoch, index)
            try:
                out.append(request_pseudonym(key, keys, salt=random(48), random=random(272)))
            except ValueError:
                continue  # not invertible (negligible): the next index
        return out

    def add(self, key: EpochKey, requests: Iterable[PseudonymRequest], blind_sigs: Iterable[bytes]) -> int:
        """Finish a refill with the issuer's answers; returns how many were good."""
        pool = self.unused.setdefault(key.epoch, [])
        good = 0
        for req, sig in zip(requests, blind_sigs, strict=True):
            try:
                pool.append(Owned(finish_pseudonym(key, req, sig), req.keys))
            except SignatureError:
                continue
            good += 1
        return good

    def forget_before(self, now: float) -> None:
        """Drop pools of past epochs (their orders, held in ``owned``, expire on their own)."""
        for e in [e for e in self.unused if e < epoch_of(now)]:
            del self.unused[e]
