"""Following other members' receipt logs: fetch what is missing, verify it, keep it.

Who follows a log: a node follows the log of every member who signed a
receipt with it (the other party of an S1 trade; the other agent and the
broker of an S2-S4 trade: each logged the same receipt), and any log an
operator asks for (``receipts.fetch_log``). Replica holders do not follow the
logs they hold entries of: replicas are spread three to a receipt on purpose
(p2pd/roles/replication.py); a holder filling every log would make every node
store everything.

For each followed log the node keeps how far it verified it
(:class:`~p2pd.market.receipt_log.Followed`, in the store: entries 1..seq,
held as replicas, reproduce a hash the member signed). Whenever it learns a
head of that member beyond it (``HeadGossip``, ``ReceiptReplica``, a session
opening) it fetches the rest, page by page (:meth:`LogFetcher.fetch`):

1. from the entries it holds itself (replicas the member sent it), checked
   as if the member had sent them now;
2. else by asking (``LogRequest``/``LogEntries``, docs/protocol.md section
   15) the member itself if connected, then other sessions ranked by
   ``BLAKE2b(member || their id)``, at most :data:`MAX_SOURCES` per fetch.

A page counts only if it chains from what is verified to a head the member
signed (:meth:`~p2pd.market.receipt_log.HeadBook.add_page`); it is then held
as replicas, so this node can answer others. A bad page from someone else is
dropped (another source is asked); from the member itself, or contradicting
another head it signed, it is a fork (``ForkSeen``), and a conflicting head
an equivocation (``EquivocationSeen``, proof gossiped). Every node answers
``LogRequest`` from what it holds: its own log, or replicas it holds.

Bounds: a page holds at most LOG_PAGE_MAX entries; one fetch asks for at
most :data:`MAX_PAGES` pages and waits :data:`ASK_TIMEOUT` for each answer;
one fetch per member runs at a time and runs at most :data:`MAX_ROUNDS` times
back to back when heads keep arriving meanwhile.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pd import log, storage
from p2pd.errors import PeerGone
from p2pd.market.receipt_log import (
    Followed,
    Fork,
    HeadBook,
    PageRejected,
    PageVerified,
    ReceiptLog,
    page_of,
    receipt_kind,
    signers,
)
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    LOG_PAGE_MAX,
    Credential,
    DecodeError,
    EquivocationProof,
    LogEntries,
    LogEntry,
    LogHead,
    LogRequest,
)
from store import FollowRecord, ReplicaRecord, Repository, StoreError

MAX_SOURCES = 8
"""Sessions asked (the member first) in one fetch."""
MAX_PAGES = 64
"""Pages one fetch asks for (512 entries)."""
MAX_ROUNDS = 4
"""Fetches one member's task runs back to back while new heads arrive."""
ASK_TIMEOUT = 5.0
"""Seconds to wait for one LogEntries."""


class Watcher(Protocol):
    """What the fetcher needs of :class:`~p2pd.roles.replication.Replication`."""

    node: Node
    repo: Repository
    log: ReceiptLog
    heads: HeadBook
    credentials: dict[str, Credential]
    counters: Counter[str]
    held: int

    def remember(self, cred: Credential) -> None: ...

    async def keep_head(self, head: LogHead) -> None: ...

    async def report(self, found: Fork | EquivocationProof | None, cred: Credential) -> None: ...


@dataclass
class _Ask:
    done: trio.Event = field(default_factory=trio.Event)
    answer: LogEntries | None = None


class LogFetcher:
    """Follows logs for a :class:`~p2pd.roles.replication.Replication` (which creates it)."""

    def __init__(self, rep: Watcher, *, timeout: float = ASK_TIMEOUT) -> None:
        self.rep = rep
        self.node = rep.node
        self.timeout = timeout
        self.follows: dict[str, Followed] = {}
        self._asks: dict[tuple[str, str, int], _Ask] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._locks: dict[str, trio.Lock] = {}
        self.idle = trio.Event()
        """Set whenever no fetch is running (tests wait on it)."""
        self.idle.set()
        self.node.handle(LogRequest, self._on_request)
        self.node.handle(LogEntries, self._on_entries)

    # --- who is followed ---------------------------------------------------------------

    async def follow(self, member: str) -> bool:
        """Start following ``member``'s log (kept in the store); True if it is new."""
        if member == self.node.member_id or member in self.follows:
            return False
        self.follows[member] = Followed(member)
        await storage.call(self.rep.repo, self.rep.repo.put_follow, FollowRecord(member, 0, bytes(32)))
        self.rep.counters["logs_followed"] += 1
        self.saw(member)
        return True

    async def follow_signers(self, encoded: bytes) -> None:
        """We committed ``encoded``: follow the logs of the others who signed it.

        Runs on its own (started by the writer): a store refusing writes is
        counted, and the next receipt with those members tries again.
        """
        try:
            members = signers(encoded)
        except DecodeError:  # pragma: no cover - we committed it, so it decodes
            return
        for member in sorted(members):
            try:
                await self.follow(member)
            except StoreError:
                self.follows.pop(member, None)
                self.rep.counters["follow_unstored"] += 1

    def restore(self, rec: FollowRecord) -> None:
        self.follows[rec.member] = Followed(rec.member, rec.seq, rec.head_hash)

    def saw(self, member: str) -> None:
        """A head of ``member`` was learnt: fetch if it is followed and ahead of what we verified."""
        followed = self.follows.get(member)
        if followed is not None and self.rep.heads.latest(member) > followed.seq:
            self.wanted(member)

    def wanted(self, member: str) -> None:
        """Fetch ``member``'s log in the background (once at a time per member)."""
        if member in self._running:
            self._again.add(member)
            return
        self._running.add(member)
        self.idle = trio.Event()
        self.node.nursery.start_soon(self._run, member)

    async def _run(self, member: str) -> None:
        try:
            for _ in range(MAX_ROUNDS):
                self._again.discard(member)
                await self.fetch(member)
                if member not in self._again:
                    break
        except StoreError as exc:  # the store failed (full disk...): try again with the next head
            self.rep.counters["log_fetch_store_failed"] += 1
            log.warning("log_fetch_store_failed", member=member, error=str(exc))
        finally:
            self._running.discard(member)
            if not self._running:
                self.idle.set()

    # --- fetching ----------------------------------------------------------------------

    def sources(self, member: str) -> list[PeerConnection]:
        """Whom to ask for ``member``'s entries: the member, then others by BLAKE2b rank."""
        sessions = self.node.sessions
        ranked = sorted((hashlib.blake2b(member.encode() + m.encode(), digest_size=8).digest(), m)
                        for m in sessions if m != member)
        order = ([member] if member in sessions else []) + [m for _, m in ranked]
        return [sessions[m] for m in order[:MAX_SOURCES]]

    async def fetch(self, member: str, *, beyond_known: bool = False) -> int:
        """Verify and keep what is missing of ``member``'s log; returns the entries added.

        Stops at the newest head of the member known, or (``beyond_known``, an
        operator's request) when no source has more; at a fork or equivocation
        (reported); or after :data:`MAX_PAGES` pages.
        """
        async with self._locks.setdefault(member, trio.Lock()):  # one fetch per member at a time
            return await self._fetch(member, beyond_known)

    async def _fetch(self, member: str, beyond_known: bool) -> int:
        rep = self.rep
        if member not in self.follows or member in rep.heads.forks or member in rep.heads.proofs:
            return 0
        added = 0
        sources = self.sources(member)
        for _page in range(MAX_PAGES):
            followed = self.follows[member]
            if not beyond_known and rep.heads.latest(member) <= followed.seq:
                break
            found = await self._from_held(followed)
            if found is None:
                found = await self._from_sources(followed, sources)
            if found is None:
                if rep.heads.latest(member) > self.follows[member].seq:
                    rep.counters["log_fetch_stalled"] += 1
                break
            if not isinstance(found, PageVerified):
                cred = rep.credentials.get(member)
                if cred is not None:
                    await rep.report(found, cred)
                break
            added += len(found.entries)
        return added

    def _credential(self, member: str, sent: Credential | None) -> Credential | None:
        """The member's credential we know, else the one sent with a page if it is valid."""
        known = self.rep.credentials.get(member)
        if known is not None or sent is None:
            return known
        try:
            self.node.policy.check(sent, self.node.clock.now())
        except Exception:  # CredentialError: not one of our community's
            return None
        self.rep.remember(sent)
        return sent

    async def _from_sources(self, followed: Followed, sources: list[PeerConnection],
                            ) -> PageVerified | Fork | EquivocationProof | None:
        """The next page from the first of ``sources`` that has it.

        A holder of fragments may lack this page but hold later ones, so a
        source with nothing after this seq is asked again for the next page;
        one that did not answer, or sent a page that proves nothing, is dropped
        from ``sources``. The source that answered moves to the front.
        """
        member = followed.member
        for conn in list(sources):  # bounded by MAX_SOURCES
            answer = await self._ask(conn, member, followed.seq)
            if answer is None:
                sources.remove(conn)
                continue
            cred = self._credential(member, answer.credential)
            if answer.head is None or cred is None:
                continue
            entries = [(e.seq, e.receipt) for e in answer.entries]
            found = self.rep.heads.add_page(followed, entries, answer.head, cred,
                                            from_member=conn.member_id == member)
            if isinstance(found, PageRejected):
                self.rep.counters["log_pages_rejected"] += 1
                log.info("log_page_rejected", member=member, source=conn.member_id, why=found.why)
                sources.remove(conn)
                continue
            if isinstance(found, PageVerified):
                await self._keep(found, fetched=True)
                sources.remove(conn)
                sources.insert(1 if sources and sources[0].member_id == member else 0, conn)
            return found
        return None

    async def _from_held(self, followed: Followed) -> PageVerified | Fork | EquivocationProof | None:
        """The next page from replicas we hold (sent by the member itself), checked; None if none."""
        cred = self.rep.credentials.get(followed.member)
        if cred is None:
            return None
        repo = self.rep.repo
        recs = await storage.call(repo, repo.replicas, followed.member, followed.seq, LOG_PAGE_MAX)
        entries, head = page_of(_held(recs), followed.seq, LOG_PAGE_MAX)
        if head is None:
            return None
        found = self.rep.heads.add_page(followed, entries, head, cred, from_member=True)
        if isinstance(found, PageRejected):  # pragma: no cover - we checked the head when it came
            return None
        if isinstance(found, PageVerified):
            await self._keep(found, fetched=False)
        return found

    async def _keep(self, page: PageVerified, *, fetched: bool) -> None:
        repo = self.rep.repo
        member = page.followed.member
        if fetched:
            head = page.head.encode()
            new = await storage.call(repo, repo.put_replicas,
                                     [ReplicaRecord(member, s, r, head) for s, r in page.entries])
            self.rep.held += new
            self.rep.counters["log_entries_fetched"] += len(page.entries)
            await self.rep.keep_head(page.head)
        self.rep.counters["log_entries_verified"] += len(page.entries)
        self.follows[member] = page.followed
        await storage.call(repo, repo.put_follow,
                           FollowRecord(member, page.followed.seq, page.followed.head_hash))

    async def _ask(self, conn: PeerConnection, member: str, after: int) -> LogEntries | None:
        key = (conn.member_id, member, after)
        ask = self._asks[key] = _Ask()
        try:
            await conn.send(LogRequest(member, after, LOG_PAGE_MAX))
            self.rep.counters["log_requests_sent"] += 1
            with trio.move_on_after(self.timeout):
                await ask.done.wait()
        except PeerGone:
            return None
        finally:
            self._asks.pop(key, None)
        return ask.answer

    async def _on_entries(self, conn: PeerConnection, msg: LogEntries) -> None:
        ask = self._asks.get((conn.member_id, msg.member, msg.after))
        if ask is None or ask.done.is_set():
            self.rep.counters["log_answers_unexpected"] += 1
            return
        ask.answer = msg
        ask.done.set()

    # --- answering ---------------------------------------------------------------------

    async def _on_request(self, conn: PeerConnection, msg: LogRequest) -> None:
        if msg.member == self.node.member_id:
            entries, head = self.rep.log.page(msg.after, msg.limit)
        else:
            repo = self.rep.repo
            recs = await storage.call(repo, repo.replicas, msg.member, msg.after, msg.limit)
            entries, head = page_of(_held(recs), msg.after, msg.limit)
        cred = self.rep.credentials.get(msg.member)
        if head is None or cred is None:
            entries, head, cred = [], None, None
        self.rep.counters["log_pages_served"] += 1
        try:
            await conn.send(LogEntries(msg.member, msg.after,
                                       tuple(LogEntry(s, receipt_kind(r), r) for s, r in entries), head, cred))
        except PeerGone:
            pass

    def status(self) -> dict[str, Any]:
        latest = self.rep.heads.latest
        return {m: {"verified": f.seq, "latest_head": latest(m)} for m, f in sorted(self.follows.items())}


def _held(recs: Sequence[ReplicaRecord]) -> list[tuple[int, bytes, LogHead]]:
    """Stored replicas as (seq, receipt, head); a record whose head does not decode ends the run."""
    out = []
    for r in recs:
        try:
            out.append((r.seq, r.entry, LogHead.decode(r.head)))
        except DecodeError:
            break
    return out
