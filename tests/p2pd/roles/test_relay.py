"""Takes between members that cannot dial each other, through a common peer (docs/protocol.md §12.9).

alice (seller) and bob (buyer) are each linked only to carol, over in-memory
streams, as two households behind NATs that both dialled a public member.
Virtual time (``autojump_clock``): timeouts pass at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, Community, eventually, link

from p2pd.errors import NotConnected, TradeRefused, TradeTimeout
from p2pd.events import OrderSeen
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import Order, Reason, RelayedAnswer, RelayedTake, TradeRefusal
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


@dataclasses.dataclass
class Trader:
    node: Node
    market: Market
    repo: MemoryRepository


Make = Callable[..., Awaitable[Trader]]


@pytest.fixture
def make_trader(make_node: Callable[..., Awaitable[Node]], nursery: trio.Nursery) -> Make:
    async def factory(member_id: str, *, relay: bool = True) -> Trader:
        node = await make_node(member_id)
        repo = MemoryRepository()
        writer = ReceiptWriter(repo)
        await nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0), relay=relay)
        return Trader(node, market, repo)

    return factory


async def post_seen(owner: Trader, seer: Trader, wh: int = 1000) -> Order:
    """``owner`` offers ``wh`` at 0.09/kWh; returns once ``seer`` holds the order (its event)."""
    with trio.fail_after(5):
        async with seer.node.events.subscribe() as events:
            order = await owner.market.post("sell", SLOT_START, wh, 90_000)
            async for ev in events:
                if isinstance(ev, OrderSeen) and ev.order_id == order.order_id.hex():
                    return order
    raise AssertionError("the event stream ended")


async def street(make_trader: Make, **carol: Any) -> tuple[Trader, Trader, Trader]:
    alice, bob, c = await make_trader("alice"), await make_trader("bob"), await make_trader("carol", **carol)
    await link(alice.node, c.node)
    await link(bob.node, c.node)
    return alice, bob, c


async def test_a_take_completes_through_a_common_peer(autojump_clock: Any, make_trader: Make) -> None:
    alice, bob, carol = await street(make_trader)
    order = await post_seen(alice, bob)
    assert "alice" not in bob.node.sessions and "bob" not in alice.node.sessions

    receipt = await bob.market.take(order.order_id, 400)
    assert (receipt.terms.seller, receipt.terms.buyer, receipt.terms.wh) == ("alice", "bob", 400)
    # Both ends hold the same receipt, with both signatures; the relay holds none.
    for trader in (alice, bob):
        stored = trader.repo.get_receipt(receipt.terms.trade_id)
        assert stored is not None and stored.encoded == receipt.encode()
    receipt.verify(alice.node.identity.keys.signing.public, bob.node.identity.keys.signing.public)
    assert carol.repo.get_receipt(receipt.terms.trade_id) is None
    assert (carol.node.counters["relay_takes"], carol.node.counters["relay_answers"]) == (1, 1)
    assert bob.node.counters["takes_relayed"] == 1 and alice.node.counters["takes_relayed_in"] == 1
    assert "alice" not in bob.node.sessions  # still no direct session
    # The owner remembered the taker's credential (for disputes) although it never met bob.
    await eventually(lambda: alice.repo.get_member("bob") is not None)
    assert alice.market.book[order.order_id].remaining_wh == 600

    # A refusal comes back signed by the owner, with what is left.
    with pytest.raises(TradeRefused) as refused:
        await bob.market.take(order.order_id, 700)
    assert refused.value.reason == Reason.INSUFFICIENT and refused.value.remaining_wh == 600
    # A retry of the first take is the same trade.
    again = await bob.market.take(order.order_id, 400, trade_id=receipt.terms.trade_id)
    assert again.encode() == receipt.encode()


async def test_the_relay_can_drop_but_not_forge_or_alter(autojump_clock: Any, make_trader: Make,
                                                         community: Community) -> None:
    alice, bob, carol = await street(make_trader)
    order = await post_seen(alice, bob)
    genuine = carol.market.relay.forward_answer
    forged_sent = trio.Event()

    async def forge(conn: PeerConnection, msg: RelayedAnswer) -> bool:
        # Instead of the owner's answer, a refusal "by alice" that carol signed.
        fake = TradeRefusal.create(carol.node.identity.keys.signing, trade_id=msg.trade_id, owner="alice",
                                   reason=int(Reason.INSUFFICIENT), remaining_wh=0, message="sold out")
        await carol.node.sessions["bob"].send(RelayedAnswer(msg.trade_id, None, fake))
        forged_sent.set()
        return True

    carol.market.relay.forward_answer = forge  # type: ignore[method-assign]
    with pytest.raises(TradeTimeout) as err:
        await bob.market.take(order.order_id, 400)
    assert forged_sent.is_set() and bob.node.counters["relayed_answers_forged"] >= 1
    tid = err.value.trade_id
    assert tid is not None and alice.repo.get_receipt(tid) is not None  # alice did commit
    assert bob.repo.get_receipt(tid) is None  # ... and bob believed no forgery: the take stays pending
    assert [p.trade_id for p in bob.repo.pending_takes()] == [tid]

    # An honest relay again: bob's retry gets alice's stored receipt.
    carol.market.relay.forward_answer = genuine  # type: ignore[method-assign]
    again = await bob.market.take(order.order_id, 400, trade_id=tid)
    assert again.encode() == alice.repo.get_receipt(tid).encoded  # type: ignore[union-attr]

    # A relay that alters a take (more energy) gets the owner's signed refusal, not a trade.
    terms = again.terms
    altered = dataclasses.replace(terms, trade_id=b"\x07" * 16, wh=900)
    sig = terms.sign(bob.node.identity.keys.signing)  # bob's signature over the original terms
    answers: list[RelayedAnswer] = []
    answered = trio.Event()
    original_handler = carol.node.handlers[RelayedAnswer]

    async def catch(conn: PeerConnection, msg: RelayedAnswer) -> None:
        answers.append(msg)
        answered.set()

    carol.node.handlers[RelayedAnswer] = catch
    await carol.node.sessions["alice"].send(
        RelayedTake("alice", 0, bob.node.identity.credential, altered, sig))
    with trio.fail_after(5):
        await answered.wait()
    carol.node.handlers[RelayedAnswer] = original_handler
    refusal = answers[0].refusal
    assert answers[0].receipt is None and refusal is not None
    assert (refusal.reason_code, refusal.owner) == (Reason.BAD_SIGNATURE, "alice")
    refusal.verify(alice.node.identity.keys.signing.public)
    assert alice.repo.get_receipt(b"\x07" * 16) is None


async def test_a_relay_forwards_only_its_peers_own_takes_once(autojump_clock: Any, make_trader: Make,
                                                              community: Community) -> None:
    alice, bob, carol = await street(make_trader)
    order = await post_seen(alice, bob)
    terms = dataclasses.replace((await bob.market.take(order.order_id, 1)).terms, trade_id=b"\x09" * 16)
    sig = terms.sign(bob.node.identity.keys.signing)
    to_carol = bob.node.sessions["carol"]
    dave = community.member("dave")
    for msg, why in (
        (RelayedTake("alice", 0, bob.node.identity.credential, terms, sig), "hops"),  # forwarded once already
        (RelayedTake("alice", 1, dave.credential, terms, sig), "not_the_taker"),  # another's take
        (RelayedTake("erin", 1, bob.node.identity.credential, terms, sig), "no_session"),
    ):
        await to_carol.send(msg)
        await eventually(lambda why=why: carol.node.counters[f"relay_dropped:{why}"] == 1)
    assert carol.node.counters["relay_takes"] == 1  # only bob's real take went through
    # A member may refuse to relay ([trading] relay = false): takes then need another path.
    quiet = await make_trader("quiet", relay=False)
    await link(quiet.node, alice.node)
    await link(bob.node, quiet.node)
    carol_conn = bob.node.sessions["carol"]
    await carol_conn.close()
    await eventually(lambda: "carol" not in bob.node.sessions)
    with pytest.raises(TradeTimeout):
        await bob.market.take(order.order_id, 10)
    assert quiet.node.counters["relay_dropped:disabled"] >= 1


async def test_no_session_at_all_is_not_connected(autojump_clock: Any, make_trader: Make) -> None:
    alice, bob = await make_trader("alice"), await make_trader("bob")
    await link(bob.node, alice.node)
    order = await post_seen(alice, bob)
    await bob.node.sessions["alice"].close()
    await eventually(lambda: not bob.node.sessions)
    with pytest.raises(NotConnected, match="nor with a peer to relay the take through"):
        await bob.market.take(order.order_id, 10)
    assert bob.repo.pending_takes() == []  # it never left the node
