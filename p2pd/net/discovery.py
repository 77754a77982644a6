"""Finding and keeping peers: static addresses plus signed peer exchange.

Two sources of addresses (docs/protocol.md, section 14):

* static peers from the configuration, dialled by address (the member
  behind an address is learnt at the first handshake);
* :class:`protocol.AddressAnnouncement` messages. Each node announces its own
  address to every new session and relays announcements it has verified.

Trust: an announcement is verified against the announcing member's
credential, which we learn from sessions (ours with that member, now or
earlier). A verified, newer announcement replaces the old one, is relayed to
every other session and becomes a dial target. An announcement from a member
whose credential we do not know yet is never relayed; it becomes a *hint*:
we dial it a few times, and the Noise handshake tells us who is really there
(a hint that leads to another member is dropped). Once a session with that
member opens, its own announcement arrives verified and spreads normally.

Every target is kept by one task that dials while no session with the member
exists, backs off exponentially (with jitter) after failures, waits while a
session is up and dials again when it ends, e.g. after the peer restarts.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pd import log
from p2pd.errors import PeerGone
from p2pd.events import PeerAddress
from p2pd.net.listener import dial
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import AddressAnnouncement, Credential, LocalProtocolError, SignatureError

Connector = Callable[[str, int], Awaitable[PeerConnection]]
# Tolerated clock skew for issued_at, as for credentials.
CLOCK_SKEW = 300


@dataclass(frozen=True)
class Backoff:
    """Retry delays: ``initial * factor**(attempt-1)`` capped at ``maximum``, +-``jitter``."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: float = 0.1
    stable_after: float = 60.0
    """A session that lasted this long resets the back-off."""

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        if attempt <= 0:
            return 0.0
        base = min(self.maximum, self.initial * self.factor ** min(attempt - 1, 64))
        return base * (1 + self.jitter * (2 * rand() - 1))


@dataclass(eq=False)
class Target:
    """One address we keep a session with."""

    host: str
    port: int
    member: str | None = None
    static: bool = False
    max_failures: int | None = None
    attempts: int = 0
    failures: int = 0
    next_attempt: float | None = None
    last_error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Discovery:
    """Keeps sessions with static peers and announced members; see the module docstring."""

    def __init__(
        self,
        node: Node,
        *,
        static_peers: Iterable[tuple[str, int]] = (),
        announce: tuple[str, int] | None = None,
        exchange: bool = True,
        connect: Connector | None = None,
        backoff: Backoff = Backoff(),
        max_age: float = 7 * 86400,
        max_hints: int = 64,
        hint_failures: int = 5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.node = node
        self.exchange = exchange
        self.backoff = backoff
        self.max_age = max_age
        self.max_hints = max_hints
        self.hint_failures = hint_failures
        self.rand = rand
        self._connect = connect or self._dial
        self._announce_addr = announce
        self._own: AddressAnnouncement | None = None
        self.credentials: dict[str, Credential] = {}
        self.addresses: dict[str, AddressAnnouncement] = {}
        self.pending: dict[str, AddressAnnouncement] = {}
        self.static: dict[str, Target] = {}
        self.by_member: dict[str, Target] = {}
        self._static_wanted = [(h, p) for h, p in static_peers]
        self._nursery: trio.Nursery | None = None
        node.handle(AddressAnnouncement, self._on_announcement)
        node.on_open.append(self._on_open)

    async def _dial(self, host: str, port: int) -> PeerConnection:
        return await dial(self.node, host, port)

    # --- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial the static peers and keep every target connected, forever."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.set_static(self._static_wanted)
            task_status.started()
            await trio.sleep_forever()

    def set_static(self, peers: Iterable[tuple[str, int]]) -> None:
        """Replace the static peer list (on reload): drop removed, start new ones."""
        wanted = {Target(h, p, static=True).address: (h, p) for h, p in peers}
        self._static_wanted = list(wanted.values())
        for host, _ in self._static_wanted:
            self.node.note_known_host(host)  # the operator vouches for it
        if self._nursery is None:
            return
        for key in list(self.static):
            if key not in wanted:
                self.static.pop(key).scope.cancel()
                log.info("static_peer_removed", addr=key)
        for key, (host, port) in wanted.items():
            if key not in self.static:
                target = Target(host, port, static=True)
                self.static[key] = target
                self._nursery.start_soon(self._keep, target)

    def set_announce(self, addr: tuple[str, int] | None) -> None:
        if addr != self._announce_addr:
            self._announce_addr = addr
            self._own = None

    def own_announcement(self) -> AddressAnnouncement | None:
        """Our signed address (renewed when half of ``max_age`` old), or None."""
        if self._announce_addr is None:
            return None
        now = int(self.node.clock.now())
        if self._own is None or now - self._own.issued_at > self.max_age / 2:
            host, port = self._announce_addr
            try:
                self._own = AddressAnnouncement.create(
                    self.node.identity.keys.signing, member_id=self.node.member_id,
                    host=host, port=port, issued_at=now)
            except LocalProtocolError as exc:
                log.error("announce_invalid", host=host, port=port, error=str(exc))
                self._announce_addr = None
                return None
        return self._own

    # --- keeping one target connected -----------------------------------------

    async def _keep(self, target: Target) -> None:
        with target.scope:
            attempt = 0
            retry_after = 0.0
            while True:
                member = target.member
                conn = self.node.sessions.get(member) if member else None
                if conn is not None:
                    await self._wait_closed(conn, target)
                    continue
                if attempt:
                    # A responder that refused us said when to come back.
                    delay = max(self.backoff.delay(attempt, self.rand), retry_after)
                    target.next_attempt = self.node.clock.now() + delay
                    await trio.sleep(delay)
                    target.next_attempt = None
                    if target.member and target.member in self.node.sessions:
                        continue
                target.attempts += 1
                try:
                    conn = await self._connect(target.host, target.port)
                except (OSError, PeerGone, trio.TooSlowError) as exc:
                    attempt += 1
                    target.failures += 1
                    target.last_error = str(exc) or type(exc).__name__
                    reason = exc.reason if isinstance(exc, PeerGone) else None
                    retry_after = min(self.backoff.maximum, getattr(exc, "retry_after", None) or 0.0)
                    self.node.counters["dial_failed"] += 1
                    if reason is not None:
                        self.node.counters[f"dial_failed:{reason.name}"] += 1
                    log.info("dial_failed", addr=target.address, member=target.member,
                             attempt=attempt, reason=reason.name if reason else None,
                             error=target.last_error)
                    if target.max_failures is not None and target.failures >= target.max_failures:
                        self._drop(target, "unreachable")
                        return
                    continue
                if target.member is not None and conn.member_id != target.member:
                    log.warning("address_mismatch", addr=target.address, expected=target.member,
                                found=conn.member_id)
                    if not target.static:
                        self._drop(target, "another member answered")
                        return
                target.member = conn.member_id
                target.last_error = None
                retry_after = 0.0
                attempt = 0 if await self._wait_closed(conn, target) else max(attempt, 1)

    async def _wait_closed(self, conn: PeerConnection, target: Target) -> bool:
        """Wait for the session to end; True if it lasted long enough to reset back-off."""
        start = self.node.clock.now()
        await conn.finished.wait()
        return self.node.clock.now() - start >= self.backoff.stable_after

    def _drop(self, target: Target, why: str) -> None:
        if target.member is not None and self.by_member.get(target.member) is target:
            del self.by_member[target.member]
        log.info("peer_target_dropped", addr=target.address, member=target.member, reason=why)
        target.scope.cancel()

    def _target_for(self, ann: AddressAnnouncement, *, hint: bool) -> None:
        """Make ``ann``'s member a dial target (or move its existing target)."""
        if self._nursery is None or ann.member_id == self.node.member_id:
            return
        if any(t.member == ann.member_id for t in self.static.values()):
            return
        target = self.by_member.get(ann.member_id)
        if target is not None:
            target.host, target.port = ann.host, ann.port
            if not hint:
                target.max_failures = None
            return
        if hint and sum(1 for t in self.by_member.values() if t.max_failures) >= self.max_hints:
            self.node.counters["announcement_hint_dropped"] += 1
            return
        target = Target(ann.host, ann.port, member=ann.member_id,
                        max_failures=self.hint_failures if hint else None)
        self.by_member[ann.member_id] = target
        self._nursery.start_soon(self._keep, target)

    # --- peer exchange -----------------------------------------------------------

    async def _on_open(self, conn: PeerConnection) -> None:
        assert conn.peer is not None
        member = conn.peer.member_id
        self.credentials[member] = conn.peer
        pending = self.pending.pop(member, None)
        if pending is not None:
            self._accept(pending, None)
        if not self.exchange:
            return
        out = [a for a in (self.own_announcement(), *self.addresses.values()) if a is not None]
        for ann in out:
            if ann.member_id == member:
                continue
            try:
                await conn.send(ann)
            except PeerGone:
                return

    async def _on_announcement(self, conn: PeerConnection, ann: AddressAnnouncement) -> None:
        if not self.exchange:
            return
        now = self.node.clock.now()
        if ann.member_id == self.node.member_id:
            return
        if ann.issued_at > now + CLOCK_SKEW or ann.issued_at < now - self.max_age:
            self.node.counters["announcement_out_of_window"] += 1
            return
        known = self.addresses.get(ann.member_id)
        if known is not None and known.issued_at >= ann.issued_at:
            return  # not newer: this is how relaying stops
        cred = self.credentials.get(ann.member_id)
        if cred is None:
            old = self.pending.get(ann.member_id)
            if old is None or old.issued_at < ann.issued_at:
                if old is None and len(self.pending) >= self.max_hints:
                    self.node.counters["announcement_hint_dropped"] += 1
                    return
                self.pending[ann.member_id] = ann
                self._target_for(ann, hint=True)
            return
        if self._accept(ann, conn):
            await self.node.broadcast(ann, exclude=conn)

    def _accept(self, ann: AddressAnnouncement, sender: PeerConnection | None) -> bool:
        """Verify and store ``ann``; True if it is new and valid (then relay it)."""
        cred = self.credentials[ann.member_id]
        try:
            ann.verify(cred.sign_pk)
        except SignatureError:
            self.node.counters["announcement_bad_signature"] += 1
            via = sender.member_id if sender else None
            self.node.logs.warning(self.node.clock.now(), "announcement_bad_signature",
                                   f"{ann.member_id}:{via}", member=ann.member_id, via=via)
            return False
        known = self.addresses.get(ann.member_id)
        if known is not None and known.issued_at >= ann.issued_at:
            return False
        self.addresses[ann.member_id] = ann
        self.node.note_known_host(ann.host)  # signed by the member: connections come first
        self.node.counters["announcements_accepted"] += 1
        self.node.logs.info(self.node.clock.now(), "peer_address", ann.member_id,
                            member=ann.member_id, host=ann.host, port=ann.port,
                            via=sender.member_id if sender else None)
        self.node.events.publish(PeerAddress(ann.member_id, ann.host, ann.port))
        self._target_for(ann, hint=False)
        return True

    def status(self) -> dict[str, Any]:
        now = self.node.clock.now()
        targets = [*self.static.values(), *self.by_member.values()]
        return {
            "announce": self._own.host + f":{self._own.port}" if self._own else (
                f"{self._announce_addr[0]}:{self._announce_addr[1]}" if self._announce_addr else None),
            "known_addresses": len(self.addresses),
            "targets": [
                {"address": t.address, "member_id": t.member, "static": t.static,
                 "connected": t.member is not None and t.member in self.node.sessions,
                 "attempts": t.attempts, "failures": t.failures, "last_error": t.last_error,
                 "retry_in_s": round(max(0.0, t.next_attempt - now), 3) if t.next_attempt else None}
                for t in targets
            ],
        }
