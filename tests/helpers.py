"""Shared test helpers: identities for a test community, a session byte pump,
and, for trio tests, ``eventually`` and ``link``.

Loaded by conftest.py (no tests/__init__.py: see pyproject's import mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pd.sim.quiet import until
from protocol import NEED_DATA, Credential, Event, Session, SigningKey, Timeouts, TrustPolicy

if TYPE_CHECKING:
    from p2pd.net.identity import NodeIdentity
    from p2pd.net.node import Node
    from p2pd.net.peer import PeerConnection

COMMUNITY = "testcommunity"
NOW = 1_800_000_000.0


def x25519_keypair() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return priv, pub


@dataclass
class Identity:
    member_id: str
    signing: SigningKey
    noise_private: bytes
    noise_public: bytes
    credential: Credential


@dataclass
class Community:
    """An issuer plus helpers to mint member identities."""

    name: str = COMMUNITY
    issuer: SigningKey = field(default_factory=SigningKey.generate)
    revoked: set[str] = field(default_factory=set)

    def member(
        self, member_id: str, *, role: str = "prosumer", valid_from: int = int(NOW) - 86400,
        valid_until: int = int(NOW) + 86400 * 365, community: str | None = None,
        issuer: SigningKey | None = None, noise_public: bytes | None = None,
        metering_point: str = "",
    ) -> Identity:
        signing = SigningKey.generate()
        priv, pub = x25519_keypair()
        cred = Credential.issue(
            issuer or self.issuer, community=community or self.name, member_id=member_id,
            role=role, metering_point=metering_point or f"EAN{abs(hash(member_id)) % 10**15:015d}",
            sign_pk=signing.public, noise_pk=noise_public or pub,
            valid_from=valid_from, valid_until=valid_until,
        )
        return Identity(member_id, signing, priv, pub, cred)

    def policy(self) -> TrustPolicy:
        return TrustPolicy(self.name, frozenset({self.issuer.public}),
                           lambda cred: cred.member_id in self.revoked)


def session_for(ident: Identity, community: Community, *, initiator: bool, now: float = NOW,
                timeouts: Timeouts = Timeouts()) -> Session:
    return Session(initiator=initiator, static_private=ident.noise_private,
                   credential=ident.credential, policy=community.policy(), now=now,
                   timeouts=timeouts)


def drain(sess: Session) -> list[Event]:
    events: list[Event] = []
    for _ in range(10_000):
        ev = sess.next_event()
        if ev is NEED_DATA:
            return events
        assert isinstance(ev, Event)
        events.append(ev)
    raise AssertionError("session produced too many events")


class SessionPair:
    """Two sessions joined by a byte pump, like h11's ConnectionPair."""

    def __init__(self, client: Session, server: Session) -> None:
        self.client = client
        self.server = server
        self.now = NOW

    def transfer(self, src: Session, dst: Session) -> list[Event]:
        data = src.data_to_send()
        if data:
            dst.receive_data(data, self.now)
        return drain(dst)

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until quiet; return (client events, server events)."""
        cev: list[Event] = []
        sev: list[Event] = []
        for _ in range(20):
            s = self.transfer(self.client, self.server)
            c = self.transfer(self.server, self.client)
            sev += s
            cev += c
            if not s and not c and not self.client._out and not self.server._out:
                break
        return cev, sev


# --- daemon-level helpers (p2pd) ---------------------------------------------


def node_identity(ident: Identity) -> NodeIdentity:
    from p2pd.net.identity import NodeIdentity, NodeKeys

    return NodeIdentity(NodeKeys(ident.signing, ident.noise_private), ident.credential)


async def eventually(predicate: Callable[[], object], *, within: float = 5.0) -> None:
    """Return once ``predicate()`` is true; fail the test if it is not within ``within`` s.

    The one way a trio test waits for something to happen. Seconds of trio's
    clock: virtual ones under ``autojump_clock``, where the wait costs no real
    time. The predicate is looked at when no task can run and again only after
    some task has run (:func:`p2pd.sim.quiet.until`): no poll interval, no
    spinning, and no time passes while there is work to do. It must read state
    that tasks change; for "after N seconds" sleep instead.
    Raises AssertionError, quoting the predicate, when ``within`` runs out.
    """
    with trio.move_on_after(within):
        await until(predicate)
        return
    raise AssertionError(f"not true within {within} s: {_source(predicate)}")


def _source(fn: Callable[[], object]) -> str:
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return repr(fn)
    return f"{inspect.getsourcefile(fn)}:{first}: {lines[0].strip()}"


async def link(a: Node, b: Node) -> tuple[PeerConnection, PeerConnection | None]:
    """Connect node ``a`` (initiator) to node ``b`` over an in-memory stream pair.

    Returns (a's connection, b's connection) once both registered the session,
    or (a's connection, None) if b refused it. Raises PeerGone if the handshake
    fails on a's side, AssertionError if b has not decided within 5 s.
    """
    client, server = trio.testing.memory_stream_pair()
    b.nursery.start_soon(b.accept, server, "memory")
    conn = await a.connect_stream(client, "memory")

    def decided() -> bool:
        # b holds the session, or it is already over (b may register it, then refuse it).
        theirs = b.sessions.get(a.member_id)
        return (theirs is not None and theirs.peer is not None) or conn.finished.is_set()

    await eventually(decided)
    return conn, b.sessions.get(a.member_id)
