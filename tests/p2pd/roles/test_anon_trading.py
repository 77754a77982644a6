"""Pseudonymous S1 orders between nodes (docs/protocol.md 12.8).

The community sees the book but not who posted: an order names a pseudonym;
the owner comes forward only to a taker, in their session, with a proof the
taker checks against the session's credential; receipts name both members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, Community, link

from p2pd.errors import TradeError
from p2pd.market.disputes import export_bundle, verify_bundle
from p2pd.market.pseudonyms import Wallet
from p2pd.net.node import Node
from p2pd.roles.anon import LocalPseudonymSource
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import (
    MAX_HOPS,
    Credential,
    OwnerProof,
    Pseudonym,
    PseudonymIssuer,
    Reason,
    Receipt,
    TakeIntent,
    is_pseudonym_name,
)
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


@dataclasses.dataclass
class Trader:
    node: Node
    market: Market
    repo: MemoryRepository


@pytest.fixture
def issuer(community: Community) -> PseudonymIssuer:
    return PseudonymIssuer(community.issuer, community.name, quota=4)


@pytest.fixture
def make_trader(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery,
                issuer: PseudonymIssuer) -> Callable[..., Awaitable[Trader]]:
    traders: dict[str, Trader] = {}

    async def dial(src: Node, member: str) -> None:
        await link(src, traders[member].node)

    async def factory(member_id: str, *, wallet: bool = True, hops: int = MarketRules.hops) -> Trader:
        node = await make_node(member_id)
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0, hops=hops))
        if wallet:
            market.wallet = Wallet(secret=member_id.encode().ljust(32, b"."), batch=2)
            market.pseudonym_source = LocalPseudonymSource(issuer, node.identity.credential)
        market.dial = lambda member: dial(node, member)
        traders[member_id] = Trader(node, market, repo)
        return traders[member_id]

    return factory


async def wait_for(predicate: Callable[[], bool], *, steps: int = 5000) -> None:
    """Let the (autojumping) clock run in bounded steps until ``predicate`` holds."""
    for _ in range(steps):
        if predicate():
            return
        await trio.sleep(0.001)
    raise AssertionError("condition not reached")


async def test_a_pseudonymous_order_is_taken_through_a_relay_and_names_its_owner_only_to_the_taker(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    alice, bob, carol = [await make_trader(n) for n in ("alice", "bob", "carol")]
    await link(alice.node, bob.node)
    await link(bob.node, carol.node)
    order = await alice.market.post("sell", SLOT_START, 2000, 90_000)
    assert is_pseudonym_name(order.member_id)
    await wait_for(lambda: order.order_id in carol.market.book)
    for t in (bob, carol):  # the book holds the order, not its owner
        entry = t.market.book[order.order_id]
        assert isinstance(entry.credential, Pseudonym) and entry.order.member_id == order.member_id
        assert "alice" not in repr(t.market.orders())
    # The one-hop stem: bob got it with hops 9 from alice, carol with 8 from bob.
    assert alice.market.counters["orders_stemmed"] == 1
    # carol has no session with alice: her intent goes back through bob, alice dials carol.
    assert "alice" not in carol.node.sessions
    receipt = await carol.market.take(order.order_id, 1500)
    assert (receipt.terms.seller, receipt.terms.buyer) == ("alice", "carol")
    assert receipt.terms.order_id == order.order_id
    assert bob.market.counters["intents_relayed"] == 1
    assert carol.market.counters["owner_proofs_accepted"] == 1
    receipt.verify(alice.node.identity.keys.signing.public, carol.node.identity.keys.signing.public)
    assert alice.market.book[order.order_id].remaining_wh == 500
    # A second take reuses the proven owner: no new intent.
    await carol.market.take(order.order_id, 500)
    assert carol.market.counters["intents_sent"] == 1
    # Sold out: the pseudonym's cancel withdraws it everywhere.
    await wait_for(lambda: order.order_id not in bob.market.book)
    await wait_for(lambda: order.order_id not in carol.market.book)


async def test_the_largest_hop_budget_the_config_takes_still_stems_a_pseudonymous_order(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    # [trading] gossip_hops takes up to MAX_HOPS; the stem's one extra hop
    # must not push the order past what the wire carries.
    alice, bob, carol = [await make_trader(n, hops=MAX_HOPS) for n in ("alice", "bob", "carol")]
    await link(alice.node, bob.node)
    await link(bob.node, carol.node)
    order = await alice.market.post("sell", SLOT_START, 2000, 90_000)
    await wait_for(lambda: order.order_id in carol.market.book)
    assert alice.market.counters["orders_stemmed"] == 1


async def test_double_selling_under_a_pseudonym_is_provable_from_receipts(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(alice.node, bob.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 90_000)
    await wait_for(lambda: order.order_id in bob.market.book)
    first = await bob.market.take(order.order_id, 800)
    # A cheating owner signs a second receipt over the same order: the terms
    # (signed by both credentials) bind the pseudonym's order id.
    terms = dataclasses.replace(first.terms, trade_id=b"\x09" * 16, wh=800)
    second = Receipt(terms, terms.sign(alice.node.identity.keys.signing),
                     terms.sign(bob.node.identity.keys.signing))
    creds = [alice.node.identity.credential, bob.node.identity.credential]
    bundle = export_bundle(alice.node.policy.community, [first.encode(), second.encode()], creds)
    report = verify_bundle(bundle, set(alice.node.policy.trusted_issuers))
    [problem] = report.problems
    assert problem.kind == "double_selling" and problem.proof["seller"] == "alice"
    assert problem.proof["order_id"] == order.order_id.hex()


async def test_forged_proofs_and_intents_change_nothing(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    alice, bob, mallory = [await make_trader(n) for n in ("alice", "bob", "mallory")]
    await link(alice.node, bob.node)
    await link(mallory.node, bob.node)
    order = await alice.market.post("sell", SLOT_START, 1000, 90_000)
    await wait_for(lambda: order.order_id in bob.market.book)
    # mallory claims alice's order: its "proof" is not the pseudonym's signature.
    await bob.node.sessions["mallory"].send(OwnerProof(order.order_id, bytes(64)))  # wrong direction: ignored
    await mallory.node.sessions["bob"].send(OwnerProof(order.order_id, b"\x01" * 64))
    await wait_for(lambda: bob.market.counters["owner_proofs_rejected"] == 1)
    # An intent sealed to someone else does not open: alice reveals nothing.
    await bob.node.sessions["alice"].send(TakeIntent(order.order_id, b"\x05" * 16, bytes(60), 8))
    await wait_for(lambda: alice.market.counters["intents_rejected"] == 1)
    assert alice.market.counters["owner_proofs_sent"] == 0


async def test_the_quota_bounds_a_members_orders(make_trader: Callable[..., Any],
                                                   autojump_clock: trio.abc.Clock) -> None:
    alice = await make_trader("alice")
    for i in range(4):
        await alice.market.post("sell", SLOT_START, 100 + i, 90_000)
    with pytest.raises(TradeError) as err:
        await alice.market.post("sell", SLOT_START, 100, 90_000)
    assert err.value.reason is Reason.OUT_OF_BOUNDS
    assert len({e.order.member_id for e in alice.market.book.values()}) == 4  # unlinkable names


async def test_a_node_without_a_wallet_trades_pseudonymous_orders_and_posts_named_ones(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    alice, dave = await make_trader("alice"), await make_trader("dave", wallet=False)
    await link(alice.node, dave.node)
    anon = await alice.market.post("sell", SLOT_START, 1000, 90_000)
    named = await dave.market.post("buy", SLOT_START, 300, 95_000)
    assert named.member_id == "dave"
    await wait_for(lambda: anon.order_id in dave.market.book and named.order_id in alice.market.book)
    assert isinstance(alice.market.book[named.order_id].credential, Credential)
    r1 = await dave.market.take(anon.order_id, 400)
    r2 = await alice.market.take(named.order_id, 300)
    assert (r1.terms.seller, r1.terms.buyer, r2.terms.seller, r2.terms.buyer) == ("alice", "dave", "alice", "dave")


async def test_a_late_joiner_learns_the_epoch_key_before_the_orders(
        make_trader: Callable[..., Any], autojump_clock: trio.abc.Clock) -> None:
    alice, erin = await make_trader("alice"), await make_trader("erin", wallet=False)
    order = await alice.market.post("sell", SLOT_START, 1000, 90_000)
    assert not erin.market.epoch_keys.keys
    await link(erin.node, alice.node)
    await wait_for(lambda: order.order_id in erin.market.book)
    assert erin.market.counters["epoch_keys_accepted"] == 1
