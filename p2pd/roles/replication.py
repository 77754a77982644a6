"""Receipt replication and head gossip: no single holder of the truth.

Every receipt a node commits goes into its hash-chained log
(:class:`~p2pd.market.receipt_log.ReceiptLog`); the node then sends the entry,
sealed (the receipt's digest, and the receipt encrypted to the members who
signed it: :func:`~p2pd.market.receipt_log.sealed_entry`), with its new
signed head (``ReceiptReplica``) to ``replicas`` other community members,
chosen deterministically from its sessions by hashing the receipt, and
gossips the head (``HeadGossip``). Receivers keep the sealed entry, which
they cannot read, and check that its digest chains to the head against what
they already hold (:class:`~p2pd.market.receipt_log.HeadBook`); a conflict
becomes an ``EquivocationGossip`` that spreads to everyone. A party to a
receipt opens it from any holder (:meth:`Replication.own_receipts`).
docs/protocol.md section 15.

Everything is kept in the store (a private in-memory one if none is given):
our log (its order assigned with each commit), the replicas held for others,
every head learnt from others (so an equivocation across a restart is still
caught) and the logs this node follows, which
:class:`~p2pd.roles.log_fetch.LogFetcher` (``self.fetcher``) completes from
the member or any replica holder.

:class:`LoggingWriter` wraps a :class:`~p2pd.roles.receipt_writer.ReceiptWriter`
so that S1 receipts committed by :class:`~p2pd.roles.trading.Market` are logged too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from p2pd import log, storage
from p2pd.errors import PeerGone
from p2pd.events import EquivocationSeen, ForkSeen
from p2pd.market.receipt_log import Fork, HeadBook, ReceiptLog, open_entry, sealed_entry, signers
from p2pd.market.receipt_log import receipt_kind as receipt_kind
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.log_fetch import LogFetcher
from p2pd.roles.receipt_writer import ReceiptWriter
from protocol import (
    Credential,
    DecodeError,
    EquivocationGossip,
    EquivocationProof,
    HeadGossip,
    LogHead,
    ReceiptReplica,
    SealedEntry,
    SignatureError,
)
from store import (
    Committed,
    HeadRecord,
    MemberRecord,
    MemoryRepository,
    Outcome,
    ReceiptRecord,
    ReplicaRecord,
    Repository,
    StoreError,
)

HEAD_HOPS = 3
LOAD_PAGE = 1000


class Replication:
    """Attach to a node: logs, replicates, watches and follows receipt logs.

    ``repo`` is the node's store: :meth:`load` restores our log (its order is
    the store's, assigned with each commit), the heads learnt from others and
    the followed logs, so all of it survives restarts. Without one a private
    in-memory store is used (simulations, tests).
    """

    def __init__(self, node: Node, *, replicas: int = 3, repo: Repository | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.node = node
        self.random_bytes = random_bytes  # sealing entries
        self.repo: Repository = repo if repo is not None else MemoryRepository()
        self.replicas = replicas
        self.log = ReceiptLog(node.identity.keys.signing, node.member_id)
        self.heads = HeadBook()
        self.held = 0  # entries of others' logs in the store
        self.credentials: dict[str, Credential] = {node.member_id: node.identity.credential}
        self.counters: Counter[str] = Counter()
        self._gossiped: set[tuple[str, int, bytes]] = set()
        node.handle(HeadGossip, self._on_head)
        node.handle(ReceiptReplica, self._on_replica)
        node.handle(EquivocationGossip, self._on_proof)
        node.on_open.append(self._on_open)
        self.fetcher = LogFetcher(self)

    async def load(self) -> None:
        """Restore our log, the heads learnt and the logs followed from the store.

        After a restart our log has the same entries and signs the same heads,
        and a head conflicting with one learnt before is still an equivocation.
        """
        repo = self.repo
        after = 0
        for _ in range(1 << 40):  # bounded by the log's length
            page = await storage.call(repo, repo.log_entries, after, LOAD_PAGE)
            if not page:
                break
            self.log.restore(page)
            after = page[-1][0]
        self.counters["restored"] = self.log.chain.seq
        for h in await storage.call(repo, repo.heads):
            self.heads.restore(LogHead(h.member, h.seq, h.head_hash, h.signature))
        for m in await storage.call(repo, repo.members):
            with contextlib.suppress(DecodeError):
                self.credentials.setdefault(m.member_id, Credential.decode(m.credential))
        for f in await storage.call(repo, repo.follows):
            self.fetcher.restore(f)
        self.held = await storage.call(repo, repo.replica_count)

    async def keep_head(self, head: LogHead) -> None:
        """Keep a head learnt from another member in the store (in memory only if it refuses)."""
        try:
            await storage.call(self.repo, self.repo.put_head,
                               HeadRecord(head.member, head.seq, head.head_hash, head.signature))
        except StoreError:  # a full disk: the head is still known until a restart
            self.counters["heads_unstored"] += 1

    def remember(self, cred: Credential) -> None:
        """Keep a member's credential (in the store too: heads are checked with it)."""
        if cred.member_id in self.credentials:
            return
        self.credentials[cred.member_id] = cred
        record = MemberRecord(cred.member_id, cred.role, cred.metering_point, cred.sign_pk,
                              cred.noise_pk, cred.encode(), cred.valid_until)
        self.node.nursery.start_soon(storage.call, self.repo, self.repo.put_member, record)

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        self.remember(conn.peer)
        if self.log.started:
            try:
                await conn.send(HeadGossip(self.log.head, self.node.identity.credential, 1))
            except PeerGone:
                pass

    def targets(self, encoded: bytes, exclude: set[str]) -> list[PeerConnection]:
        """``replicas`` sessions, ranked by BLAKE2b(receipt || member id)."""
        ranked = sorted(
            (hashlib.blake2b(encoded + m.encode(), digest_size=8).digest(), m)
            for m in self.node.sessions if m not in exclude)
        return [self.node.sessions[m] for _, m in ranked[: self.replicas] if m in self.node.sessions]

    def committed(self, seq: int, encoded: bytes) -> list[tuple[bytes, LogHead]]:
        """The store committed ``encoded`` as entry ``seq`` of our log; the entries now logged."""
        added = self.log.add(seq, encoded)
        self.counters["logged"] += len(added)
        return added

    def seal(self, encoded: bytes) -> SealedEntry:
        """Our entry ``encoded`` as others hold it: sealed to its signers we know (ourselves at least)."""
        entry, to = sealed_entry(encoded, self.credentials, self.random_bytes)
        if len(to) < len(signers(encoded)):
            self.counters["sealed_without_a_signer"] += 1  # its credential unknown to us
        return entry

    async def spread(self, added: list[tuple[bytes, LogHead]], parties: tuple[str, ...] = ()) -> None:
        """Send each new entry, sealed, to ``replicas`` members (not its parties) and gossip the head."""
        for encoded, head in added:
            entry = self.seal(encoded)
            for conn in self.targets(encoded, set(parties) | signers(encoded)):
                try:
                    await conn.send(ReceiptReplica(entry, head))
                    self.counters["replicas_sent"] += 1
                except PeerGone:
                    pass
        if added:
            await self.node.broadcast(HeadGossip(added[-1][1], self.node.identity.credential, HEAD_HOPS))

    async def _on_replica(self, conn: PeerConnection, msg: ReceiptReplica) -> None:
        assert conn.peer is not None
        if msg.head.member != conn.peer.member_id:
            self.counters["replicas_rejected"] += 1
            return
        new_head = not self.heads.has(msg.head)
        # We cannot read the receipt (it is sealed to its parties): what we
        # check and keep is that its digest chains to the head its member signed.
        try:
            found = self.heads.add_entry(msg.entry.digest, msg.head, conn.peer)
        except SignatureError:
            self.counters[self.rejected(msg.head, conn.peer)] += 1
            return
        self.counters["replicas_held"] += 1
        rec = ReplicaRecord(msg.head.member, msg.head.seq, msg.entry.encode(), msg.head.encode())
        try:
            if await storage.call(self.repo, self.repo.put_replica, rec):
                self.held += 1
        except StoreError:  # a full disk: the sender's other replica holders keep it
            self.counters["replicas_unstored"] += 1
        if new_head:
            await self.keep_head(msg.head)
        await self.report(found, conn.peer)
        self.fetcher.saw(msg.head.member)

    async def own_receipts(self, member: str) -> list[tuple[int, bytes]]:
        """``(seq, receipt)`` of the entries of ``member``'s log we hold (replicas, fetched
        pages) that are sealed to us: our own receipts, from someone else's log."""
        out = []
        after = 0
        for _ in range(1 << 40):  # bounded by the log's length
            page = await storage.call(self.repo, self.repo.replicas, member, after, LOAD_PAGE)
            if not page:
                break
            for rec in page:
                with contextlib.suppress(DecodeError):
                    receipt = open_entry(SealedEntry.decode(rec.entry), self.node.identity.keys.noise_private)
                    if receipt is not None:
                        out.append((rec.seq, receipt))
            after = page[-1].seq
        return out

    async def _on_head(self, conn: PeerConnection, msg: HeadGossip) -> None:
        new_head = not self.heads.has(msg.head)
        try:
            self.node.policy.check(msg.credential, self.node.clock.now())
            found = self.heads.add(msg.head, msg.credential)
        except Exception:  # CredentialError / SignatureError: drop
            self.counters[self.rejected(msg.head, msg.credential)] += 1
            return
        self.remember(msg.credential)
        key = (msg.head.member, msg.head.seq, msg.head.head_hash)
        if found is None and key not in self._gossiped and msg.hops > 1:
            self._gossiped.add(key)
            await self.node.broadcast(HeadGossip(msg.head, msg.credential, msg.hops - 1), exclude=conn)
        if new_head:
            await self.keep_head(msg.head)
        await self.report(found, msg.credential)
        self.fetcher.saw(msg.head.member)

    @staticmethod
    def rejected(head: LogHead, cred: Credential) -> str:
        """The counter for a head we drop: ``heads_obsolete`` if its member signed it under
        the old head domain (a node not yet upgraded; never a fork), else ``heads_rejected``."""
        return "heads_obsolete" if head.obsolete(cred.sign_pk) else "heads_rejected"

    async def report(self, found: Fork | EquivocationProof | None, cred: Credential) -> None:
        """Publish a fork or equivocation of ``cred``'s member (and gossip the proof)."""
        if isinstance(found, EquivocationProof):
            self.counters["equivocations_detected"] += 1
            log.warning("equivocation", member=cred.member_id, seq=found.head_a.seq)
            self.node.events.publish(EquivocationSeen(cred.member_id, found.head_a.seq))
            await self.node.broadcast(EquivocationGossip(found, cred, HEAD_HOPS))
        elif isinstance(found, Fork):
            self.counters["forks_detected"] += 1
            log.warning("receipt_log_fork", member=cred.member_id, seq=found.head.seq)
            self.node.events.publish(ForkSeen(cred.member_id, found.head.seq))

    async def _on_proof(self, conn: PeerConnection, msg: EquivocationGossip) -> None:
        try:
            self.node.policy.check(msg.credential, self.node.clock.now())
        except Exception:
            return
        if self.heads.accept_proof(msg.proof, msg.credential):
            self.counters["equivocations_learnt"] += 1
            self.node.events.publish(EquivocationSeen(msg.credential.member_id, msg.proof.head_a.seq))
            if msg.hops > 1:
                await self.node.broadcast(EquivocationGossip(msg.proof, msg.credential, msg.hops - 1),
                                          exclude=conn)

    def status(self) -> dict[str, Any]:
        return {"seq": self.log.chain.seq, "head": self.log.chain.head_hash.hex(),
                "held": self.held, "equivocators": sorted(self.heads.proofs),
                "counters": dict(self.counters)}


class LoggingWriter:
    """A ReceiptWriter that also logs and replicates every receipt it commits."""

    def __init__(self, inner: ReceiptWriter, replication: Replication) -> None:
        self.inner = inner
        self.replication = replication

    async def commit(self, record: ReceiptRecord) -> Outcome:
        outcome = await self.inner.commit(record)
        # Only what this commit stored enters the log (a Duplicate was logged
        # when it was first stored; its bytes may even differ from ``record``).
        if isinstance(outcome, Committed):
            rep = self.replication
            added = rep.committed(outcome.seq, outcome.receipt.encoded)
            rep.node.nursery.start_soon(rep.spread, added, (record.seller, record.buyer))
            # Whoever signed it with us logged it too: follow their logs.
            rep.node.nursery.start_soon(rep.fetcher.follow_signers, outcome.receipt.encoded)
        return outcome

    async def run(self, **kwargs: Any) -> None:
        await self.inner.run(**kwargs)
