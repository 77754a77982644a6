"""Static peers with back-off and reconnection; signed peer exchange."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import link

from p2pd.net.discovery import Backoff, Discovery
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import AddressAnnouncement, SigningKey


class FakeNet:
    """host:port -> node, dialled over memory streams; a node may be 'down'."""

    def __init__(self, dialler: Node) -> None:
        self.dialler = dialler
        self.nodes: dict[tuple[str, int], Node] = {}
        self.down: set[tuple[str, int]] = set()
        self.attempts: list[float] = []

    async def connect(self, host: str, port: int) -> PeerConnection:
        self.attempts.append(trio.current_time())
        target = self.nodes.get((host, port))
        if target is None or (host, port) in self.down:
            raise OSError(111, "Connection refused")
        conn, _ = await link(self.dialler, target)
        return conn


NO_JITTER = Backoff(initial=1.0, maximum=30.0, jitter=0.0, stable_after=60.0)


async def test_backoff_doubles_up_to_the_cap_then_connects(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    net = FakeNet(alice)
    disc = Discovery(alice, static_peers=[("bob.example", 7400)], connect=net.connect, backoff=NO_JITTER)
    start = trio.current_time()
    await nursery.start(disc.run)
    await trio.sleep(100)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(net.attempts)]
    assert net.attempts[0] == start
    assert gaps[:6] == [1, 2, 4, 8, 16, 30]
    assert disc.status()["targets"][0]["failures"] == len(net.attempts)
    net.nodes[("bob.example", 7400)] = bob
    await trio.sleep(31)
    assert "bob" in alice.sessions
    assert disc.status()["targets"][0]["member_id"] == "bob"


async def test_reconnects_after_the_peer_restarts(
    make_node: Callable[..., Any], autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    net = FakeNet(alice)
    net.nodes[("bob.example", 7400)] = bob
    disc = Discovery(alice, static_peers=[("bob.example", 7400)], connect=net.connect, backoff=NO_JITTER)
    await nursery.start(disc.run)
    await trio.sleep(120)  # a stable session
    assert "bob" in alice.sessions and len(net.attempts) == 1
    # bob restarts: his session ends and he is unreachable for 10 s.
    net.down.add(("bob.example", 7400))
    down_at = trio.current_time()
    await bob.aclose()
    await trio.sleep(10)
    net.down.clear()
    await trio.sleep(10)
    assert "bob" in alice.sessions
    # immediate redial (stable session), then 1, 2, 4, 8 s back-off: up again at +15 s
    assert [round(t - down_at) for t in net.attempts[1:]] == [0, 1, 3, 7, 15]


def _ann(key: SigningKey, member: str, port: int, at: float) -> AddressAnnouncement:
    return AddressAnnouncement.create(key, member_id=member, host="10.0.0.1", port=port, issued_at=int(at))


async def test_announcements_are_verified_relayed_and_dialled(
    make_node: Callable[..., Any], nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    carol: Node = await make_node("carol")
    dials: list[tuple[str, int]] = []

    async def no_dial(host: str, port: int) -> PeerConnection:
        dials.append((host, port))
        raise OSError(111, "refused")

    discs = {}
    for n, port in ((alice, 1), (bob, 2), (carol, 3)):
        discs[n.member_id] = Discovery(n, announce=(f"{n.member_id}.example", 7400 + port),
                                       connect=no_dial, backoff=NO_JITTER)
        await nursery.start(discs[n.member_id].run)
    # carol knows bob, bob knows alice; carol has never met alice.
    await link(bob, alice)
    await link(carol, bob)
    await trio.sleep(1)
    # carol got alice's address from bob but cannot verify it: a hint, not relayed.
    assert "alice" in discs["carol"].pending and "alice" not in discs["carol"].addresses
    assert ("alice.example", 7401) in dials
    # once carol meets alice, alice's own announcement is verified and kept.
    await link(carol, alice)
    await trio.sleep(1)
    assert discs["carol"].addresses["alice"].port == 7401
    assert discs["bob"].addresses.keys() == {"alice", "carol"}
    # alice moves: the newer announcement spreads through bob to carol.
    discs["alice"].set_announce(("alice2.example", 7500))
    await trio.sleep(5)
    newer = discs["alice"].own_announcement()
    assert newer is not None
    await alice.broadcast(newer)
    await trio.sleep(1)
    assert discs["carol"].addresses["alice"].host == "alice2.example"
    # an announcement signed by someone else for bob's id is rejected.
    forged = _ann(SigningKey.generate(), "bob", 9999, alice.clock.now() + 10)
    await carol.sessions["alice"].send(forged)
    await trio.sleep(1)
    assert alice.counters["announcement_bad_signature"] == 1
    assert discs["alice"].addresses["bob"].port != 9999


async def test_stale_and_future_announcements_are_ignored(
    make_node: Callable[..., Any], nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    alice: Node = await make_node("alice")
    bob: Node = await make_node("bob")
    disc = Discovery(alice, connect=FakeNet(alice).connect, max_age=3600)
    await nursery.start(disc.run)
    _, bob_side = await link(alice, bob)
    now = alice.clock.now()
    key = bob.identity.keys.signing
    for at in (now - 7200, now + 3600):
        await bob.send_to("alice", _ann(key, "bob", 7400, at))
    await trio.sleep(1)
    assert alice.counters["announcement_out_of_window"] == 2
    assert "bob" not in disc.addresses


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(initial=2, maximum=100, jitter=0.25)
    assert b.delay(0) == 0
    assert b.delay(1, lambda: 0.0) == pytest.approx(1.5)
    assert b.delay(1, lambda: 1.0) == pytest.approx(2.5)
    assert b.delay(40, lambda: 0.5) == 100
