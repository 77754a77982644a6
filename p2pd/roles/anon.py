"""Pseudonymous S1 orders on trio (docs/protocol.md 12.8): the part of a market that hides owners.

:class:`Pseudonymous` is mixed into :class:`~p2pd.roles.trading.Market`:

* posting: an order of ours is signed by a fresh pseudonym from the
  :class:`~p2pd.market.pseudonyms.Wallet` (refilled from the issuer through a
  :class:`PseudonymSource`) and first handed to **one** gossip neighbour with
  ``hops + 1`` (a one-hop stem), so the neighbours that see it with the
  community's ``hops`` get it from someone who is not its owner;
* reaching an owner: the taker sends a ``TakeIntent`` (its member id sealed to
  the pseudonym) back along the path the order came (``_came_from``); relays
  forward it one hop; the owner opens the seal, opens a session with the taker
  (dialling if needed) and sends an ``OwnerProof`` there; the taker checks it
  against the session's credential and only then takes;
* epoch keys: sent to each new session (``EpochKeyAnnounce``) and forwarded
  when new, as revocation lists are.

The rules (checks, wallet, key ring) are in p2pd/market/pseudonyms.py.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from p2pd import storage
from p2pd.errors import NotConnected, P2pdError, PeerGone, TradeRefused, TradeTimeout
from p2pd.market.book import BookEntry, OrderBook
from p2pd.market.pseudonyms import EpochKeyRing, Owned, Wallet
from p2pd.market.rules import MarketRules
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    MAX_HOPS,
    Credential,
    CredentialError,
    DecodeError,
    EpochKey,
    EpochKeyAnnounce,
    Order,
    OrderGossip,
    OwnerProof,
    Pseudonym,
    PseudonymIssuer,
    QuotaExceeded,
    Reason,
    SignatureError,
    TakeIntent,
    epoch_of,
    intent_context,
    intent_payload,
    open_sealed,
    read_intent_payload,
    seal,
    sign_owner_proof,
    verify_owner_proof,
)

INTENT_MEMORY = 600.0  # s an intent id is remembered (drops loops and repeats)
MAX_INTENTS = 4096


class PseudonymSource(Protocol):
    """Where a member's wallet is refilled: its issuer's pseudonym service."""

    remaining: int | None  # the member's quota left in the epoch, as the issuer last said (None: unknown)

    async def epoch_key(self, epoch: int) -> EpochKey: ...

    async def grant(self, epoch: int, blinded: list[bytes]) -> list[bytes]: ...


class WalletKeeper(Protocol):
    """Keeps a wallet durable (p2pd/roles/wallet_store.py); each call returns once committed.

    Raises :class:`~p2pd.errors.TradeNotStored` if the store cannot write.
    """

    async def reserve(self, epoch: int, indices: list[int]) -> None:
        """Before blinding: these indices are spent, whatever the issuer answers."""

    async def granted(self, owned: list[Owned]) -> None:
        """Before any is used: the issuer's pseudonyms, unused."""

    async def use(self, owned: Owned) -> None:
        """Before its order is signed: the pseudonym is used. Raises TradeRefused if it was already."""


class Pseudonymous:
    """Pseudonymous orders of a market (mixed into Market)."""

    node: Node
    rules: MarketRules
    orderbook: OrderBook
    counters: Any
    wallet: Wallet | None
    pseudonym_source: PseudonymSource | None
    wallet_keeper: WalletKeeper | None
    refill_refusal: P2pdError | None
    dial: Callable[[str], Awaitable[Any]] | None
    epoch_keys: EpochKeyRing
    repo: Any

    def _init_anon(self) -> None:
        self.wallet = None  # set to post pseudonymous orders (with pseudonym_source)
        self.pseudonym_source = None
        self.wallet_keeper = None  # set to keep the wallet across restarts (the daemon)
        self.refill_refusal = None  # why the last refill got nothing (told to whoever posts)
        self.dial = None  # opens a session with a member: the owner reaches its taker with it
        self.epoch_keys = self.orderbook.epoch_keys = EpochKeyRing(
            self.node.policy.community, frozenset(self.node.policy.trusted_issuers))
        self._came_from: dict[bytes, str] = {}  # order id -> member that first sent it to us
        self._owners: dict[bytes, str] = {}  # order id -> the member that proved it owns it
        self._proof_waiters: dict[bytes, trio.Event] = {}
        self._intents: dict[bytes, float] = {}  # intent id -> when seen
        self._revealed: set[tuple[bytes, str]] = set()  # (order id, taker) we answered
        self._refill_lock = trio.Lock()
        self.node.handle(TakeIntent, self._on_take_intent)
        self.node.handle(OwnerProof, self._on_owner_proof)
        self.node.handle(EpochKeyAnnounce, self._on_epoch_key)

    def dial_for_trade(self, member_id: str, dial: Callable[[str], Awaitable[Any]]) -> Awaitable[Any]:
        raise NotImplementedError  # Market's

    def now(self) -> int:
        raise NotImplementedError  # Market's (the market clock: epochs are market time)

    @property
    def me(self) -> str:
        return self.node.member_id

    # --- ownership ---------------------------------------------------------------------

    def owned(self, order_id: bytes) -> Owned | None:
        """Our pseudonym behind ``order_id``, if the order is one of our pseudonymous ones."""
        return self.wallet.owned.get(order_id) if self.wallet is not None else None

    def is_own(self, entry: BookEntry) -> bool:
        """True for our own orders, named or pseudonymous."""
        return entry.order.member_id == self.me or self.owned(entry.order.order_id) is not None

    # --- posting -----------------------------------------------------------------------

    async def draw_pseudonym(self, now: int) -> Owned | None:
        """An unused pseudonym for a new order, refilling the wallet if needed; None if none can be had."""
        if self.wallet is None:
            return None
        owned = self.wallet.draw(now)
        if owned is None and await self.refill_pseudonyms(now):
            owned = self.wallet.draw(now)
        if owned is not None and self.wallet_keeper is not None:
            # Committed as used before the order exists: after a crash it is
            # never drawn again (it stays in ``owned`` here either way).
            await self.wallet_keeper.use(owned)
        return owned

    async def refill_pseudonyms(self, now: float) -> int:
        """Fetch one batch of pseudonyms for ``now``'s epoch from the source; returns how many."""
        if self.wallet is None or self.pseudonym_source is None:
            return 0
        async with self._refill_lock:
            if self.wallet.unused.get(epoch_of(now)):
                return len(self.wallet.unused[epoch_of(now)])  # another task refilled meanwhile
            epoch = epoch_of(now)
            try:
                key = await self.pseudonym_source.epoch_key(epoch)
                await self.add_epoch_key(key)
                held = self.epoch_keys.keys.get(epoch)
                if held is not None and held != key:
                    raise TradeRefused(f"the issuer's key for epoch {epoch} is not the one the community "
                                       "holds", Reason.BAD_SIGNATURE)
                # Blinding factors and salts must be secret: the OS's randomness,
                # never the (seeded) ids generator.
                requests = self.wallet.requests(key, os.urandom, self.pseudonym_source.remaining)
                if self.wallet_keeper is not None:
                    await self.wallet_keeper.reserve(epoch, [r.keys.index for r in requests])
                sigs = await self.pseudonym_source.grant(epoch, [r.blinded_msg for r in requests])
                good = self.wallet.add(key, requests, sigs)
                if self.wallet_keeper is not None:
                    try:
                        await self.wallet_keeper.granted(good)
                    except P2pdError:
                        pool = self.wallet.unused.get(epoch, [])
                        self.wallet.unused[epoch] = [o for o in pool if o not in good]
                        raise
            except (P2pdError, ValueError, DecodeError, SignatureError) as exc:
                self.counters[f"pseudonym_refill_failed:{type(exc).__name__}"] += 1
                self.refill_refusal = exc if isinstance(exc, P2pdError) else TradeRefused(
                    f"the issuer's answer is unusable: {exc}", Reason.PROTOCOL_ERROR)
                return 0
            self.refill_refusal = None
            self.counters["pseudonyms_granted"] += len(good)
            self.wallet.forget_before(now)
            return len(good)

    async def reload_pseudonymous_orders(self) -> int:
        """Put our live pseudonymous orders back in the book after a restart; returns how many.

        Call once the wallet is restored (its used pseudonyms name the orders
        that are ours). Raises StorageUnavailable / StoreError from the store.
        """
        if self.wallet is None:
            return 0
        count = 0
        for rec in await storage.call(self.repo, self.repo.live_orders, self.now()):
            owned = self.owned(rec.order_id)
            if owned is None or rec.member_id != owned.pseudonym.member_id or rec.order_id in self.orderbook.live:
                continue
            remaining = await storage.call(self.repo, self.repo.remaining_wh, rec.order_id, rec.wh)
            self.orderbook.add_own(Order.decode(rec.encoded), owned.pseudonym, remaining)
            count += 1
        return count

    async def push_stem(self, gossip: OrderGossip) -> None:
        """Send our new pseudonymous order to one gossip neighbour with ``hops + 1``.

        That neighbour forwards it with the community's ``hops``, as if it were
        its own; without a gossip neighbour the order goes out as usual.
        """
        sessions = sorted(self.gossip_sessions(), key=lambda c: c.member_id)
        if sessions:
            conn = sessions[gossip.order.order_id[0] % len(sessions)]
            try:
                # One hop more, within what the wire carries (gossip_hops may be MAX_HOPS).
                await conn.send(OrderGossip(gossip.order, gossip.credential, min(gossip.hops + 1, MAX_HOPS)))
                self.counters["orders_stemmed"] += 1
                return
            except PeerGone:
                pass
        self.push_gossip(gossip)

    def gossip_sessions(self) -> list[PeerConnection]:
        raise NotImplementedError  # Market's

    def push_gossip(self, gossip: OrderGossip) -> None:
        raise NotImplementedError  # Market's

    def note_origin(self, order_id: bytes, conn: PeerConnection) -> None:
        """Remember who sent us a pseudonymous order first: intents go back that way."""
        self._came_from.setdefault(order_id, conn.member_id)

    def forget_orders(self, keep: Callable[[bytes], bool]) -> None:
        """Drop what we remember of orders the book no longer holds."""
        for table in (self._came_from, self._owners):
            for oid in [oid for oid in table if not keep(oid)]:
                del table[oid]
        if self.wallet is not None:
            for oid in [oid for oid in self.wallet.owned if not keep(oid)]:
                del self.wallet.owned[oid]
        self._revealed = {(oid, t) for oid, t in self._revealed if keep(oid)}

    # --- reaching an owner (taker) -----------------------------------------------------

    async def reach_owner(self, entry: BookEntry) -> str:
        """The member behind ``entry``'s order, once it proved it in a session with us.

        For an order naming its member that is the member. Raises
        :class:`NotConnected` (no path back to the owner),
        :class:`TradeTimeout` (no proof in ``take_timeout``) or
        :class:`TradeRefused` (our own order).
        """
        pseudonym = entry.credential
        order_id = entry.order.order_id
        if not isinstance(pseudonym, Pseudonym):
            return entry.order.member_id
        if self.owned(order_id) is not None:
            raise TradeRefused("cannot take our own order", Reason.BAD_ROLE)
        owner = self._owners.get(order_id)
        if owner is not None and owner in self.node.sessions:
            return owner
        hop = self._came_from.get(order_id)
        conn = self.node.sessions.get(hop) if hop is not None else None
        if conn is None:
            raise NotConnected("no session on the path the order came by")
        intent_id = os.urandom(16)
        context = intent_context(self.node.policy.community, order_id, intent_id)
        waiter = self._proof_waiters.setdefault(order_id, trio.Event())
        try:
            await conn.send(TakeIntent(order_id, intent_id, seal(pseudonym.box_pk, context,
                                                                  intent_payload(self.me)),
                                       self.rules.hops))
        except PeerGone as exc:
            raise NotConnected("the path to the order's owner closed") from exc
        self.counters["intents_sent"] += 1
        with trio.move_on_after(self.rules.take_timeout):
            await waiter.wait()
        owner = self._owners.get(order_id)
        if owner is None or owner not in self.node.sessions:
            self._proof_waiters.pop(order_id, None)
            raise TradeTimeout("the order's owner did not come forward")
        return owner

    async def _on_owner_proof(self, conn: PeerConnection, msg: OwnerProof) -> None:
        entry = self.orderbook.entry_for_take(msg.order_id, retry=True)
        assert conn.peer is not None
        if entry is None or not isinstance(entry.credential, Pseudonym):
            self.counters["owner_proofs_unknown"] += 1
            return
        try:
            verify_owner_proof(entry.credential.sign_pk, msg.signature, community=self.node.policy.community,
                               order_id=msg.order_id, owner_credential_id=conn.peer.credential_id,
                               taker_credential_id=self.node.identity.credential.credential_id)
        except SignatureError:
            self.counters["owner_proofs_rejected"] += 1
            return
        self._owners[msg.order_id] = conn.peer.member_id
        self.counters["owner_proofs_accepted"] += 1
        waiter = self._proof_waiters.pop(msg.order_id, None)
        if waiter is not None:
            waiter.set()

    # --- intents: relaying, and answering as the owner -----------------------------------

    async def _on_take_intent(self, conn: PeerConnection, msg: TakeIntent) -> None:
        now = trio.current_time()
        if msg.intent_id in self._intents:
            self.counters["intents_duplicate"] += 1
            return
        if len(self._intents) >= MAX_INTENTS:
            self._intents = {i: t for i, t in self._intents.items() if now - t < INTENT_MEMORY}
            if len(self._intents) >= MAX_INTENTS:
                self._intents.pop(next(iter(self._intents)))
        self._intents[msg.intent_id] = now
        owned = self.owned(msg.order_id)
        if owned is not None:
            await self._answer_intent(owned, msg)
            return
        hop = self._came_from.get(msg.order_id)
        nxt = self.node.sessions.get(hop) if hop is not None else None
        if msg.hops <= 0 or nxt is None or nxt is conn:
            self.counters["intents_unroutable"] += 1
            return
        try:
            await nxt.send(TakeIntent(msg.order_id, msg.intent_id, msg.sealed, msg.hops - 1))
            self.counters["intents_relayed"] += 1
        except PeerGone:
            self.counters["intents_unroutable"] += 1

    async def _answer_intent(self, owned: Owned, msg: TakeIntent) -> None:
        if self.orderbook.entry_for_take(msg.order_id, retry=True) is None:
            self.counters["intents_for_gone_orders"] += 1
            return
        context = intent_context(self.node.policy.community, msg.order_id, msg.intent_id)
        try:
            taker = read_intent_payload(open_sealed(owned.keys.box_private, context, msg.sealed))
        except DecodeError:
            self.counters["intents_rejected"] += 1
            return
        if taker == self.me or (msg.order_id, taker) in self._revealed and taker in self.node.sessions:
            self.counters["intents_repeated"] += 1
            return
        self._revealed.add((msg.order_id, taker))
        self.node.nursery.start_soon(self._prove_to, taker, owned)

    async def _prove_to(self, taker: str, owned: Owned) -> None:
        """Open (or use) a session with ``taker`` and show it the order is ours."""
        conn = self.node.sessions.get(taker)
        if conn is None and self.dial is not None:
            try:
                await self.dial_for_trade(taker, self.dial)
            except (P2pdError, OSError, trio.TooSlowError, KeyError):
                self.counters["owner_dial_failed"] += 1
                return
            conn = self.node.sessions.get(taker)
        if conn is None or conn.peer is None:
            self.counters["owner_unreachable"] += 1
            return
        order_id = owned.pseudonym.order_id
        proof = sign_owner_proof(owned.keys.signing, community=self.node.policy.community, order_id=order_id,
                                 owner_credential_id=self.node.identity.credential.credential_id,
                                 taker_credential_id=conn.peer.credential_id)
        try:
            await conn.send(OwnerProof(order_id, proof))
            self.counters["owner_proofs_sent"] += 1
        except PeerGone:
            pass

    # --- epoch keys --------------------------------------------------------------------

    async def add_epoch_key(self, key: EpochKey, source: PeerConnection | None = None) -> bool:
        """Hold ``key`` if it is new and acceptable, and pass it on to every other session."""
        if not self.epoch_keys.offer(key, self.now()):
            return False
        self.counters["epoch_keys_accepted"] += 1
        await self.node.broadcast(EpochKeyAnnounce(key), exclude=source)
        return True

    async def _on_epoch_key(self, conn: PeerConnection, msg: EpochKeyAnnounce) -> None:
        await self.add_epoch_key(msg.epoch_key, conn)

    async def announce_epoch_keys(self, conn: PeerConnection) -> None:
        """Tell a new session the epoch keys we hold (so it can check our pseudonymous orders)."""
        now = self.now()
        self.epoch_keys.prune(now)
        for key in self.epoch_keys.current(now):
            try:
                await conn.send(EpochKeyAnnounce(key))
            except PeerGone:
                return


class LocalPseudonymSource:
    """A :class:`PseudonymSource` over an in-process :class:`~protocol.PseudonymIssuer`.

    For the simulator and tests, and for an issuer that runs its service in
    the same process as a member's node; ``credential`` is the member's.
    """

    def __init__(self, issuer: PseudonymIssuer, credential: Credential) -> None:
        self.issuer = issuer
        self.credential = credential
        self.remaining: int | None = None

    async def epoch_key(self, epoch: int) -> EpochKey:
        return self.issuer.epoch_key(epoch)

    async def grant(self, epoch: int, blinded: list[bytes]) -> list[bytes]:
        try:
            return self.issuer.grant(self.credential, epoch, blinded, os.urandom)
        except (QuotaExceeded, CredentialError) as exc:
            raise TradeRefused(f"issuer refused pseudonyms: {exc}", exc.reason) from exc
