"""Revocation lists in the daemon: keep the newest per issuer, spread, enforce.

Build the node's trust policy from a registry so ``is_revoked`` follows it::

    registry = RevocationRegistry(trusted_issuers)
    node = Node(identity, registry.policy(community), nursery, ...)
    attach_revocations(node, registry)

``TrustPolicy`` is frozen; its ``is_revoked`` closes over this mutable
registry, so a newer list applies to the very next handshake. When a newer
list arrives (from a peer or :meth:`RevocationGossip.install`), established
sessions with members it revokes are closed with REVOKED and the list is
forwarded to every other session. Each new session receives our lists, so a
node that was offline catches up on its next connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from p2pd import log
from p2pd.errors import PeerGone
from p2pd.events import RevocationInstalled
from p2pd.net.peer import PeerConnection
from protocol import (
    Credential,
    Reason,
    RevocationAnnounce,
    RevocationList,
    SignatureError,
    TrustPolicy,
)

if TYPE_CHECKING:
    from p2pd.net.node import Node


class RevocationRegistry:
    """The newest verified revocation list of each trusted issuer."""

    def __init__(self, trusted_issuers: Iterable[bytes]) -> None:
        self.trusted_issuers = frozenset(trusted_issuers)
        self.lists: dict[bytes, RevocationList] = {}

    def policy(self, community: str) -> TrustPolicy:
        """A TrustPolicy for ``community`` whose ``is_revoked`` reads this registry."""
        return TrustPolicy(community, self.trusted_issuers, self.is_revoked)

    def is_revoked(self, cred: Credential) -> bool:
        rl = self.lists.get(cred.issuer_pk)
        return rl is not None and rl.revokes(cred)

    def offer(self, rl: RevocationList) -> bool:
        """Keep ``rl`` if it is from a trusted issuer, verifies and is newer.

        Returns True if it replaced what we held. Raises :class:`SignatureError`
        if the signature does not verify (untrusted issuers and older or equal
        serials return False: both are normal when lists spread).
        """
        if rl.issuer_pk not in self.trusted_issuers:
            return False
        current = self.lists.get(rl.issuer_pk)
        if not rl.newer_than(current):
            return False
        rl.verify_signature()
        self.lists[rl.issuer_pk] = rl
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"issuer": pk.hex(), "serial": rl.serial, "issued_at": rl.issued_at,
                 "members": list(rl.member_ids), "credentials": [c.hex() for c in rl.credential_ids]}
                for pk, rl in self.lists.items()]


class RevocationGossip:
    """Wires a :class:`RevocationRegistry` into a node (see module docstring)."""

    def __init__(self, node: Node, registry: RevocationRegistry) -> None:
        self.node = node
        self.registry = registry

    async def install(self, rl: RevocationList, source: PeerConnection | None = None) -> bool:
        """Apply ``rl`` (from a peer or the operator). Returns True if it was new.

        Raises :class:`SignatureError` if it does not verify.
        """
        if not self.registry.offer(rl):
            return False
        node = self.node
        node.counters["revocation_lists"] += 1
        log.warning("revocation_list", issuer=rl.issuer_pk.hex()[:16], serial=rl.serial,
                    members=len(rl.member_ids), credentials=len(rl.credential_ids),
                    source=source.member_id if source else "local")
        node.events.publish(RevocationInstalled(rl.issuer_pk.hex(), rl.serial, list(rl.member_ids)))
        cut = [c for c in list(node.connections) if c.peer is not None and rl.revokes(c.peer)]
        for conn in cut:
            node.counters["revoked_closes"] += 1
            log.warning("session_revoked", peer=conn.member_id, serial=rl.serial)
            node.nursery.start_soon(conn.close, Reason.REVOKED, "credential revoked by its issuer")
        announce = RevocationAnnounce(rl)
        for conn in list(node.sessions.values()):
            if conn is not source and conn not in cut:
                node.nursery.start_soon(_send_quietly, conn, announce)
        return True

    async def on_announce(self, conn: PeerConnection, msg: RevocationAnnounce) -> None:
        try:
            await self.install(msg.revocation_list, source=conn)
        except SignatureError:
            self.node.counters["revocation_bad_signature"] += 1
            self.node.logs.warning(self.node.clock.now(), "revocation_rejected", conn.member_id,
                                   peer=conn.member_id, reason="BAD_SIGNATURE")

    async def on_open(self, conn: PeerConnection) -> None:
        for rl in list(self.registry.lists.values()):
            await _send_quietly(conn, RevocationAnnounce(rl))


async def _send_quietly(conn: PeerConnection, msg: RevocationAnnounce) -> None:
    try:
        await conn.send(msg)
    except PeerGone:
        pass


def attach_revocations(node: Node, registry: RevocationRegistry) -> RevocationGossip:
    """Handle RevocationAnnounce on ``node`` and share lists with new sessions.

    ``node.policy`` should come from ``registry.policy(...)``; otherwise new
    handshakes are not checked against the registry (sessions are still cut).
    """
    gossip = RevocationGossip(node, registry)
    node.handle(RevocationAnnounce, gossip.on_announce)
    node.on_open.append(gossip.on_open)
    return gossip
