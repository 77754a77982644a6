"""Revocation lists spread between nodes, cut revoked members off and keep them out."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from p2pd_test_helpers import NOW, Community, Identity, eventually, link, node_identity

from p2pd.clock import TrioWallClock
from p2pd.errors import PeerGone
from p2pd.events import RevocationInstalled
from p2pd.net.node import Node
from p2pd.net.policing import attach_policer
from p2pd.net.revocations import RevocationGossip, RevocationRegistry, attach_revocations
from protocol import Reason, RevocationAnnounce, SignatureError, issue_revocation

NodeMaker = Callable[[str], Awaitable[tuple[Node, RevocationGossip]]]


@pytest.fixture
def make_rnode(community: Community, nursery: trio.Nursery) -> NodeMaker:
    """A node whose trust policy reads its own revocation registry."""

    async def factory(member_id: str, ident: Identity | None = None) -> tuple[Node, RevocationGossip]:
        registry = RevocationRegistry({community.issuer.public})
        node = Node(node_identity(ident or community.member(member_id)),
                    registry.policy(community.name), nursery, clock=TrioWallClock(NOW))
        attach_policer(node)
        return node, attach_revocations(node, registry)

    return factory


async def test_list_spreads_cuts_off_and_keeps_out(
    make_rnode: NodeMaker, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    bob, bob_rl = await make_rnode("bob")
    alice, alice_rl = await make_rnode("alice")
    carol, carol_rl = await make_rnode("carol")
    mallory_ident = community.member("mallory")
    mallory, _ = await make_rnode("mallory", mallory_ident)
    await link(alice, bob)
    await link(carol, bob)
    m_conn, _ = await link(mallory, bob)
    rl = issue_revocation(community.issuer, ["mallory"], serial=1, now=NOW)
    async with bob.events.subscribe() as events:
        assert await alice_rl.install(rl)  # the operator loads it on alice
        # alice -> bob -> carol, and bob closes mallory's session.
        await eventually(lambda: carol_rl.registry.lists.get(community.issuer.public) == rl)
        with trio.fail_after(5):
            await m_conn.finished.wait()
        event = events.receive_nowait()
    assert isinstance(event, RevocationInstalled) and event.members == ["mallory"]
    assert m_conn.close_reason == Reason.REVOKED
    assert "mallory" not in bob.sessions
    assert bob.counters["revoked_closes"] == 1 and bob.counters["revocation_lists"] == 1
    # Mallory cannot come back: bob's handshake check now refuses the credential.
    client, server = trio.testing.memory_stream_pair()
    bob.nursery.start_soon(bob.accept, server, "10.0.0.66:1")
    try:
        again = await mallory.connect_stream(client, "bob")
        with trio.fail_after(5):
            await again.finished.wait()
        assert again.close_reason == Reason.REVOKED
    except PeerGone:
        pass
    await eventually(lambda: bob.counters["handshake_failed:REVOKED"] == 1)
    assert set(bob.sessions) == {"alice", "carol"}


async def test_late_joiner_receives_the_list_on_connect(
    make_rnode: NodeMaker, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    bob, bob_rl = await make_rnode("bob")
    dave, dave_rl = await make_rnode("dave")
    rl = issue_revocation(community.issuer, ["mallory"], serial=4, now=NOW)
    assert await bob_rl.install(rl)
    await link(dave, bob)
    await eventually(lambda: dave_rl.registry.lists.get(community.issuer.public) == rl)


async def test_older_untrusted_or_forged_lists_are_ignored(
    make_rnode: NodeMaker, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    bob, bob_rl = await make_rnode("bob")
    alice, alice_rl = await make_rnode("alice")
    conn, _ = await link(alice, bob)
    newer = issue_revocation(community.issuer, ["mallory"], serial=5, now=NOW)
    older = issue_revocation(community.issuer, ["alice"], serial=4, now=NOW)
    assert await bob_rl.install(newer)
    await eventually(lambda: alice_rl.registry.lists.get(community.issuer.public) == newer)
    assert not await bob_rl.install(older)  # an older list never replaces a newer one
    assert not await bob_rl.install(issue_revocation(Community().issuer, ["alice"], serial=9, now=NOW))
    forged = dataclasses.replace(
        issue_revocation(community.issuer, ["mallory"], serial=6, now=NOW), member_ids=("alice",))
    with pytest.raises(SignatureError):
        await bob_rl.install(forged)
    await conn.send(RevocationAnnounce(forged))  # alice relays a forged list to bob
    await eventually(lambda: bob.counters["revocation_bad_signature"] == 1)
    assert bob_rl.registry.lists[community.issuer.public] == newer
    assert "alice" in bob.sessions


async def test_credential_id_revocation_allows_a_reissued_credential(
    make_rnode: NodeMaker, community: Community, autojump_clock: trio.testing.MockClock
) -> None:
    bob, bob_rl = await make_rnode("bob")
    old = community.member("erin")
    erin_old, _ = await make_rnode("erin", old)
    conn, _ = await link(erin_old, bob)
    rl = issue_revocation(community.issuer, [], serial=1, now=NOW,
                          credential_ids=[old.credential.credential_id])
    assert await bob_rl.install(rl)
    with trio.fail_after(5):
        await conn.finished.wait()
    assert conn.close_reason == Reason.REVOKED
    erin_new, _ = await make_rnode("erin", community.member("erin"))  # a fresh credential
    await link(erin_new, bob)
    assert "erin" in bob.sessions
