"""Pseudonym issuance on trio (docs/protocol.md 12.8, "Issuance"): both ends of PseudonymAsk.

* :class:`IssuerService` -- the community operator's node: answers
  ``PseudonymAsk`` from authenticated members with blind signatures, at most
  the quota per member and epoch. The decisions (whose credential, how many)
  are :class:`protocol.PseudonymIssuer`'s; here they are made durable: an
  epoch's key is committed before it is published, a member's new count
  before the signatures leave, so a restart neither resets a quota (the
  Sybil and spam bound) nor makes a second key for an epoch.
* :class:`RemotePseudonymSource` -- a member's
  :class:`~p2pd.roles.anon.PseudonymSource` over its session with the
  issuer's node; the market's wallet refills through it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pd import log, storage
from p2pd.clock import Clock, trio_deadline
from p2pd.errors import NotConnected, P2pdError, PeerFault, PeerGone, TradeRefused, TradeTimeout
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    EPOCH_LEN,
    CredentialError,
    EpochKey,
    PseudonymAsk,
    PseudonymGrant,
    PseudonymIssuer,
    PseudonymRefused,
    QuotaExceeded,
    Reason,
    SignatureError,
    SigningKey,
    epoch_of,
    generate_epoch_private,
    unwrap_epoch_private,
    wrap_epoch_private,
)
from store import EpochKeyRecord, QuotaRecord, Repository, StorageUnavailable


class IssuerService:
    """The issuer's pseudonym service on a node (the community operator's).

    ``announce`` is told every epoch key this service makes or loads (the
    market spreads it as ``EpochKeyAnnounce``). Call :meth:`load` once, then
    :meth:`serve` in a nursery.
    """

    def __init__(self, node: Node, repo: Repository, issuer: SigningKey, *, quota: int, clock: Clock,
                 announce: Callable[[EpochKey], Awaitable[Any]]) -> None:
        self.node = node
        self.repo = repo
        self.clock = clock
        self.announce = announce
        self.core = PseudonymIssuer(issuer, node.policy.community, quota=quota)
        self._key_lock = trio.Lock()
        self._grant_lock = trio.Lock()  # one grant at a time: counts are read, raised and committed in turn
        node.handle(PseudonymAsk, self._on_ask)

    async def load(self) -> None:
        """Take back the kept epoch keys and this and later epochs' counts.

        Raises ValueError if a kept key does not unwrap with this issuer key
        (the key file was replaced), StoreError/StorageUnavailable from the store.
        """
        now_epoch = epoch_of(self.clock.now())
        for rec in await storage.call(self.repo, self.repo.epoch_keys):
            public = EpochKey.decode(rec.public)
            private = await trio.to_thread.run_sync(unwrap_epoch_private, self.core.issuer, rec.private)
            if public.modulus != private.public.modulus() or public.issuer_pk != self.core.issuer.public:
                raise ValueError(f"kept epoch key {rec.epoch} is not this issuer's")
            self.core.keys[rec.epoch] = (public, private)
        for q in await storage.call(self.repo, self.repo.quotas, now_epoch - 1):
            self.core.used[(q.member_id, q.epoch)] = q.used

    async def key_for(self, epoch: int) -> EpochKey:
        """The key of ``epoch``, made and committed the first time. Raises StorageUnavailable."""
        async with self._key_lock:
            held = self.core.keys.get(epoch)
            if held is not None:
                return held[0]
            # Key generation takes a good fraction of a second: not on the trio thread.
            private = await trio.to_thread.run_sync(generate_epoch_private)
            public = EpochKey.create(self.core.issuer, community=self.core.community, epoch=epoch,
                                     modulus=private.public.modulus(), quota=self.core.quota)
            rec = EpochKeyRecord(epoch, public.encode(), wrap_epoch_private(self.core.issuer, private))
            await storage.call(self.repo, self.repo.put_epoch_key, rec)
            self.core.keys[epoch] = (public, private)
            log.info("epoch_key_made", epoch=epoch, quota=self.core.quota)
        await self.announce(public)
        return public

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Have this epoch's and the next epoch's keys published, a day ahead, forever.

        Started once this epoch's key exists (made now if the store has none).
        """
        for epoch in sorted(self.core.keys):
            await self.announce(self.core.keys[epoch][0])
        started = False
        while True:
            epoch = epoch_of(self.clock.now())
            for e in (epoch, epoch + 1):
                try:
                    await self.key_for(e)
                except StorageUnavailable as exc:
                    log.warning("epoch_key_not_stored", epoch=e, error=str(exc))
                if not started:
                    task_status.started()
                    started = True
            # Wake at the next epoch, or sooner (an hour) to retry a key the store refused.
            wake = min(self.clock.now() + 3600.0, (epoch + 1) * EPOCH_LEN)
            await trio.sleep_until(trio_deadline(self.clock, wake))

    def remaining(self, member_id: str, epoch: int) -> int:
        return max(0, self.core.quota - self.core.used.get((member_id, epoch), 0))

    async def _on_ask(self, conn: PeerConnection, msg: PseudonymAsk) -> None:
        assert conn.peer is not None
        member = conn.peer.member_id
        current = epoch_of(self.clock.now())
        if msg.epoch not in (current, current + 1):
            await self._refuse(conn, msg, Reason.OUT_OF_BOUNDS,
                               f"epoch {msg.epoch} is neither the current ({current}) nor the next")
            return
        try:
            key = await self.key_for(msg.epoch)
            if not msg.blinded:
                await conn.send(PseudonymGrant(msg.ask_id, key, (), self.remaining(member, msg.epoch)))
                return
            async with self._grant_lock:
                before = self.core.used.get((member, msg.epoch), 0)
                try:
                    sigs = await trio.to_thread.run_sync(
                        self.core.grant, conn.peer, msg.epoch, list(msg.blinded), os.urandom)
                except QuotaExceeded as exc:
                    self.node.counters["pseudonym_asks_over_quota"] += 1
                    await self._refuse(conn, msg, Reason.RATE_LIMITED, str(exc))
                    return
                except CredentialError as exc:
                    await self._refuse(conn, msg, exc.reason, str(exc))
                    return
                except ValueError as exc:  # a blinded value out of range: nothing counted
                    await self._refuse(conn, msg, Reason.INVALID_MESSAGE, f"blinded value: {exc}")
                    return
                used = self.core.used[(member, msg.epoch)]
                try:
                    await storage.call(self.repo, self.repo.put_quota, QuotaRecord(member, msg.epoch, used))
                except StorageUnavailable:
                    # Not kept: the signatures must not leave. Give the count
                    # back (nothing was handed out) and tell the member.
                    self.core.used[(member, msg.epoch)] = before
                    await self._refuse(conn, msg, Reason.STORAGE_UNAVAILABLE, "the issuer cannot store counts")
                    return
            self.node.counters["pseudonyms_issued"] += len(sigs)
            await conn.send(PseudonymGrant(msg.ask_id, key, tuple(sigs), self.remaining(member, msg.epoch)))
        except StorageUnavailable:
            await self._refuse(conn, msg, Reason.STORAGE_UNAVAILABLE, "the issuer cannot store its epoch key")
        except PeerGone:
            pass

    async def _refuse(self, conn: PeerConnection, msg: PseudonymAsk, reason: Reason, text: str) -> None:
        self.node.counters[f"pseudonym_asks_refused:{reason.name}"] += 1
        try:
            await conn.send(PseudonymRefused(msg.ask_id, reason, text[:200]))
        except PeerGone:
            pass


async def refuse_asks(conn: PeerConnection, msg: PseudonymAsk) -> None:
    """The handler of a node that runs no pseudonym service: say so rather than stay silent."""
    try:
        await conn.send(PseudonymRefused(msg.ask_id, Reason.NOT_FOUND, "this node runs no pseudonym service"))
    except PeerGone:
        pass


class RemotePseudonymSource:
    """A member's :class:`~p2pd.roles.anon.PseudonymSource`: asks ``issuer_node`` in their session.

    ``dial`` opens a session with a member id when there is none (discovery's
    ``dial_member``); ``timeout`` bounds each ask. Raises (from
    :meth:`epoch_key` and :meth:`grant`) :class:`NotConnected`,
    :class:`TradeTimeout`, :class:`TradeRefused` (the issuer said no, with its
    reason and words) or :class:`PeerFault` (an answer that does not check).
    """

    def __init__(self, node: Node, issuer_node: str, *, timeout: float,
                 dial: Callable[[str], Awaitable[Any]] | None = None) -> None:
        self.node = node
        self.issuer_node = issuer_node
        self.timeout = timeout
        self.dial = dial
        self.remaining: int | None = None  # the quota left, as the last grant said
        self._keys: dict[int, EpochKey] = {}
        self._waiting: dict[bytes, trio.Event] = {}
        self._answers: dict[bytes, PseudonymGrant | PseudonymRefused] = {}
        node.handle(PseudonymGrant, self._on_answer)
        node.handle(PseudonymRefused, self._on_answer)

    async def _session(self) -> PeerConnection:
        conn = self.node.sessions.get(self.issuer_node)
        if conn is None and self.dial is not None:
            try:
                await self.dial(self.issuer_node)
            except (P2pdError, OSError, KeyError, trio.TooSlowError) as exc:
                raise NotConnected(f"cannot reach the issuer's node {self.issuer_node!r}: {exc}") from exc
            conn = self.node.sessions.get(self.issuer_node)
        if conn is None:
            raise NotConnected(f"no session with the issuer's node {self.issuer_node!r}")
        return conn

    async def _ask(self, epoch: int, blinded: list[bytes]) -> PseudonymGrant:
        conn = await self._session()
        ask_id = os.urandom(16)
        done = self._waiting[ask_id] = trio.Event()
        try:
            await conn.send(PseudonymAsk(ask_id, epoch, tuple(blinded)))
            with trio.move_on_after(self.timeout):
                await done.wait()
        except PeerGone as exc:
            raise NotConnected(f"the session with the issuer's node {self.issuer_node!r} closed") from exc
        finally:
            self._waiting.pop(ask_id, None)
        answer = self._answers.pop(ask_id, None)
        if answer is None:
            raise TradeTimeout(f"the issuer's node {self.issuer_node!r} did not answer in {self.timeout:g} s")
        if isinstance(answer, PseudonymRefused):
            raise TradeRefused(f"the issuer refused pseudonyms: {answer.message}", answer.reason_code)
        return answer

    async def epoch_key(self, epoch: int) -> EpochKey:
        if epoch in self._keys:
            return self._keys[epoch]
        answer = await self._ask(epoch, [])
        key = answer.epoch_key
        policy = self.node.policy
        if key.epoch != epoch or key.community != policy.community or key.issuer_pk not in policy.trusted_issuers:
            raise PeerFault(f"the issuer's node sent a key for another epoch, community or issuer "
                            f"(epoch {key.epoch})", Reason.UNTRUSTED_ISSUER)
        try:
            key.verify_signature()
        except SignatureError as exc:
            raise PeerFault("the issuer's epoch key does not verify", Reason.BAD_SIGNATURE) from exc
        self._keys = {e: k for e, k in self._keys.items() if e >= epoch - 1} | {epoch: key}
        self.remaining = answer.remaining
        return key

    async def grant(self, epoch: int, blinded: list[bytes]) -> list[bytes]:
        key = await self.epoch_key(epoch)
        answer = await self._ask(epoch, blinded)
        if answer.epoch_key != key:
            raise PeerFault("the issuer answered with another epoch key", Reason.BAD_SIGNATURE)
        if len(answer.blind_sigs) != len(blinded):
            raise PeerFault(f"the issuer sent {len(answer.blind_sigs)} signatures for {len(blinded)} asks",
                            Reason.INVALID_MESSAGE)
        self.remaining = answer.remaining
        return list(answer.blind_sigs)

    async def _on_answer(self, conn: PeerConnection, msg: PseudonymGrant | PseudonymRefused) -> None:
        done = self._waiting.get(msg.ask_id)
        if done is None or conn.member_id != self.issuer_node:
            self.node.counters["pseudonym_answers_unasked"] += 1
            return
        self._answers[msg.ask_id] = msg
        done.set()

