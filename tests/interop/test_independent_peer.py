"""Interop: a peer written from docs/protocol.md alone against our node.

The peer (``independent_peer.py``, loaded by path) imports no project code.
This test module uses the project only to run the counterpart: a p2pd Node
and Market listening on loopback TCP.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from p2pd_test_helpers import NOW, Community, eventually, node_identity

from p2pd.clock import TrioWallClock
from p2pd.events import SessionClosed
from p2pd.net.listener import serve_p2p
from p2pd.net.node import Node, NodeLimits
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from protocol import Ping, Reason, SigningKey, Timeouts
from store import MemoryRepository

HERE = pathlib.Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "protocol.md"


def _load_peer() -> Any:
    name = "p2pd_independent_peer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "independent_peer.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ip = _load_peer()

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT  # first slot open for trading at NOW


@dataclass
class Counterpart:
    node: Node
    market: Market
    repo: MemoryRepository
    port: int


@dataclass
class World:
    issuer_seed: bytes
    community: Community
    ours: Counterpart
    start_peer: Callable[..., Any]
    streams: list[trio.SocketStream]


async def start_counterpart(nursery: trio.Nursery, community: Community, member_id: str,
                            limits: NodeLimits | None = None) -> Counterpart:
    node = Node(node_identity(community.member(member_id)), community.policy(), nursery,
                clock=TrioWallClock(NOW), limits=limits)
    repo = MemoryRepository()
    writer = ReceiptWriter(repo)
    await nursery.start(writer.run)
    market = Market(node, repo, writer, rules=MarketRules(take_timeout=2.0))
    listeners = await nursery.start(serve_p2p, node, "127.0.0.1", 0)
    return Counterpart(node, market, repo, listeners[0].socket.getsockname()[1])


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    issuer_seed = os.urandom(32)  # our own issuer key, shared by both sides
    community = Community(issuer=SigningKey.from_seed(issuer_seed))
    ours = await start_counterpart(nursery, community, "node")

    def make_peer(member_id: str = "indie", **identity_kwargs: Any) -> Any:
        ident = ip.make_identity(issuer_seed, community.name, member_id,
                                 valid_from=int(NOW) - 86400, valid_until=int(NOW) + 86400 * 30,
                                 **identity_kwargs)
        return ip.Peer(ident, community.name, {ip.ed25519_public(issuer_seed)},
                       clock=ours.node.clock.now)

    streams: list[trio.SocketStream] = []

    async def start_peer(member_id: str = "indie", *, run: bool = True, request_orders: bool = True,
                         **kw: Any) -> Any:
        peer = make_peer(member_id, **kw)
        stream = await trio.open_tcp_stream("127.0.0.1", ours.port)
        streams.append(stream)
        await peer.connect(stream, request_orders=request_orders)
        if run:
            nursery.start_soon(peer.run)
        return peer

    world = World(issuer_seed, community, ours, start_peer, streams)
    yield world
    for stream in streams:
        await stream.aclose()


async def established(world: World, member_id: str = "indie") -> Any:
    node = world.ours.node
    await eventually(lambda: member_id in node.sessions and node.sessions[member_id].peer is not None)
    return node.sessions[member_id]


# --- 1. handshake ------------------------------------------------------------------------------


async def test_handshake_with_our_node(world: World) -> None:
    peer = await world.start_peer()
    assert peer.remote.member_id == "node"
    assert peer.remote.noise_pk == world.ours.node.identity.credential.noise_pk
    conn = await established(world)
    assert conn.peer.member_id == "indie"
    # Both sides agree on the channel binding (section 4.1).
    assert len(peer.hs.handshake_hash) == 64
    assert conn.handshake_hash == peer.hs.handshake_hash
    # Section 12.3: the node sends OrdersRequest right after establishment.
    await peer.wait_for(lambda m: m[1] == ip.ORDERS_REQUEST)


# --- 2. ping / pong / close -------------------------------------------------------------------------


async def test_ping_pong_both_ways_and_close(world: World) -> None:
    peer = await world.start_peer()
    conn = await established(world)
    await peer.send([1, ip.PING, 4242])
    pong = await peer.wait_for(lambda m: m[1] == ip.PONG)
    assert pong == [1, ip.PONG, 4242]
    # node -> peer: the node (as application) pings, our peer answers automatically
    await conn.send(Ping(seq=7))
    await peer.wait_for(lambda m: m[1] == ip.PING and m[2] == 7)
    # Close with a reason. It is decrypted at the nonce after our Pong's, so the node
    # seeing it also proves it accepted the Pong frame (implicit nonces, section 4.5).
    async with world.ours.node.events.subscribe() as events:
        await peer.close(ip.CODE["SHUTDOWN"], "independent peer going away")
        with trio.fail_after(5):
            await conn.finished.wait()
            async for ev in events:
                if isinstance(ev, SessionClosed) and ev.member == "indie":
                    assert ev.reason == "SHUTDOWN"
                    break
    assert conn.session.close_reason == Reason.SHUTDOWN
    assert "indie" not in world.ours.node.sessions


# --- 3. trading ------------------------------------------------------------------------------------


async def test_node_order_gossip_and_take_by_peer(world: World) -> None:
    peer = await world.start_peer()
    await established(world)
    market = world.ours.market
    order = await market.post("sell", SLOT_START, 2000, 93_000)
    msg = await peer.wait_for(lambda m: m[1] == ip.ORDER_GOSSIP and m[2][0] == order.order_id)
    assert msg[4] == 15  # the owner gossips with hops = 15 (section 12.3)
    # verify the order signature from the spec's rule, independently of the peer's book logic
    got = ip.Order.from_array(msg[2])
    cred = ip.Credential.from_array(msg[3])
    assert cred.member_id == "node"
    assert got.verify(cred.sign_pk)
    assert peer.check_order(got, cred, peer.now()) is None
    assert order.order_id in peer.book

    trade = await peer.take(order.order_id, 1500)  # verifies both signatures itself
    terms_b = ip.terms_bytes(trade.terms)
    assert ip.ed25519_verify(cred.sign_pk, trade.seller_sig, terms_b)
    assert ip.ed25519_verify(peer.identity.sign_pk, trade.buyer_sig, terms_b)
    assert trade.terms[3:5] == ["node", "indie"]
    stored = world.ours.repo.get_receipt(trade.terms[0])
    assert stored is not None
    assert stored.encoded == ip.pack(trade.to_array())

    # A retry with the same trade_id and terms returns the stored receipt (rule 1)
    again = await peer.take(order.order_id, 1500, retry_terms=trade.terms)
    assert again.to_array() == trade.to_array()
    assert len(world.ours.repo.receipts_for_order(order.order_id)) == 1

    # TradeRefused: more than remains
    with pytest.raises(ip.TradeRefusedError) as err:
        await peer.take(order.order_id, 600)
    assert err.value.reason == ip.CODE["INSUFFICIENT"] and err.value.remaining_wh == 500


async def test_take_of_unknown_order_is_refused(world: World) -> None:
    peer = await world.start_peer()
    await established(world)
    order = await world.ours.market.post("sell", SLOT_START, 1000, 80_000)
    await peer.wait_for(lambda m: m[1] == ip.ORDER_GOSSIP)
    await world.ours.market.cancel(order.order_id)
    await peer.wait_for(lambda m: m[1] == ip.CANCEL_GOSSIP)
    with pytest.raises(ip.TradeRefusedError) as err:
        await peer.take(order.order_id, 100)
    assert err.value.reason == ip.CODE["NOT_FOUND"] and err.value.remaining_wh == 0


async def test_orders_request_snapshot(world: World) -> None:
    market = world.ours.market
    order = await market.post("buy", SLOT_START, 800, 120_000)
    peer = await world.start_peer()
    await established(world)
    # connect() sent our one OrdersRequest (section 12.3)
    snap = await peer.wait_for(lambda m: m[1] == ip.ORDERS_SNAPSHOT)
    ids = [body[0][0] for body in snap[2]]
    assert order.order_id in ids
    assert peer.book[order.order_id].order.side == "buy"
    # Take a buy order: the taker (our peer) is the seller
    trade = await peer.take(order.order_id, 800)
    assert trade.terms[3:5] == ["indie", "node"]
    assert world.ours.repo.get_receipt(trade.terms[0]) is not None


async def test_peer_posts_order_and_node_takes_it(world: World) -> None:
    peer = await world.start_peer()
    await established(world)
    market = world.ours.market
    sell = await peer.post("sell", SLOT_START, 3000, 90_000)
    await eventually(lambda: sell.order_id in market.book)
    assert market.book[sell.order_id].order.member_id == "indie"
    receipt = await market.take(sell.order_id, 1200)
    assert receipt.terms.seller == "indie" and receipt.terms.buyer == "node"
    mine = peer.receipts[receipt.terms.trade_id]
    assert receipt.encode() == ip.pack(mine.to_array())
    stored = world.ours.repo.get_receipt(receipt.terms.trade_id)
    assert stored is not None and stored.encoded == ip.pack(mine.to_array())
    # a buy order of ours, taken by the node as seller
    buy = await peer.post("buy", SLOT_START, 500, 100_000)
    await eventually(lambda: buy.order_id in market.book)
    receipt2 = await market.take(buy.order_id, 500)
    assert (receipt2.terms.seller, receipt2.terms.buyer) == ("node", "indie")
    assert receipt2.terms.trade_id in peer.receipts


async def test_peer_answers_node_orders_request(world: World) -> None:
    """The node asks every new session for its orders; our snapshot fills its book."""
    peer = ip.Peer(
        ip.make_identity(world.issuer_seed, world.community.name, "late",
                         valid_from=int(NOW) - 86400, valid_until=int(NOW) + 86400),
        world.community.name, {ip.ed25519_public(world.issuer_seed)}, clock=world.ours.node.clock.now)
    order = ip.Order.create(peer.identity.sign_seed, order_id=os.urandom(16), member_id="late",
                            side="sell", slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                            expiry=SLOT_START - 300)
    peer.book[order.order_id] = ip.BookEntry(order, peer.identity.credential)
    stream = await trio.open_tcp_stream("127.0.0.1", world.ours.port)
    world.streams.append(stream)
    await peer.connect(stream, request_orders=False)
    world.ours.node.nursery.start_soon(peer.run)
    await eventually(lambda: order.order_id in world.ours.market.book)


async def test_bad_orders_and_takes(world: World) -> None:
    peer = await world.start_peer()
    await established(world)
    market = world.ours.market
    # An order whose signature does not verify is dropped silently (gossip is never answered).
    good = ip.Order.create(peer.identity.sign_seed, order_id=os.urandom(16), member_id="indie",
                           side="sell", slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                           expiry=SLOT_START - 300)
    forged = good.to_array()[:8] + [bytes(64)]
    await peer.send([1, ip.ORDER_GOSSIP, forged, peer.identity.credential.to_array(), 8])
    # An order naming another member than its credential's
    other = ip.Order.create(peer.identity.sign_seed, order_id=os.urandom(16), member_id="someone",
                            side="sell", slot_start=SLOT_START, slot_len=SLOT, wh=100, price=50_000,
                            expiry=SLOT_START - 300)
    await peer.send([1, ip.ORDER_GOSSIP, other.to_array(), peer.identity.credential.to_array(), 8])
    await peer.send([1, ip.PING, 5])
    await peer.wait_for(lambda m: m[1] == ip.PONG and m[2] == 5)  # session still up
    assert good.order_id not in market.book and other.order_id not in market.book

    order = await market.post("sell", SLOT_START, 1000, 80_000)
    await eventually(lambda: order.order_id in peer.book)
    o = peer.book[order.order_id].order
    base = [os.urandom(16), o.order_id, o.wh, "node", "indie", o.slot_start, o.slot_len, 10, o.price,
            peer.now()]

    async def take_raw(terms: list[Any], sig: bytes) -> list[Any]:
        await peer.send([1, ip.TAKE, terms, sig])
        return await peer.wait_for(lambda m: m[1] in (ip.TRADE_ACCEPTED, ip.TRADE_REFUSED)
                                   and (m[2] if m[1] == ip.TRADE_REFUSED else m[2][0][0]) == terms[0])

    def sign(terms: list[Any]) -> bytes:
        return ip.ed25519_sign(peer.identity.sign_seed, ip.terms_bytes(terms))

    cheap = base[:8] + [o.price - 1] + base[9:]
    cheap[0] = os.urandom(16)
    ans = await take_raw(cheap, sign(cheap))
    assert ans[1] == ip.TRADE_REFUSED and ans[3] == ip.CODE["OUT_OF_BOUNDS"]
    ans = await take_raw(base, bytes(64))
    assert ans[1] == ip.TRADE_REFUSED and ans[3] == ip.CODE["BAD_SIGNATURE"]
    assert world.ours.repo.receipts_for_order(o.order_id) == []


@pytest.mark.parametrize(("plaintext", "reason"), [
    (bytes.fromhex("93020201"), 2),  # version 2 -> UNSUPPORTED_VERSION
    (bytes.fromhex("93c30201"), 2),  # version true -> UNSUPPORTED_VERSION
    (bytes.fromhex("92010e"), 19),  # unknown type 14 -> INVALID_MESSAGE
    (bytes.fromhex("930102"), 19),  # Ping without its field (array of 2) -> INVALID_MESSAGE
    (bytes.fromhex("940102cc01"), 19),  # fixarray header says 4, 3 present (truncated)
    (bytes.fromhex("93010280"), 19),  # an empty map -> INVALID_MESSAGE
    (bytes.fromhex("930102cb3ff0000000000000"), 19),  # a float -> INVALID_MESSAGE
])
async def test_bad_messages_close_the_session(world: World, plaintext: bytes, reason: int) -> None:
    peer = await world.start_peer(run=False)
    conn = await established(world)
    async with peer._send_lock:
        await peer.stream.send_all(ip.frame(peer.hs.encrypt(plaintext)))
    with trio.fail_after(5):
        while (msg := await peer.receive()) is not None and msg[1] != ip.CLOSE:
            pass
    assert msg is not None and msg[2] == reason
    with trio.fail_after(5):
        await conn.finished.wait()


async def test_hello_after_handshake_is_unexpected(world: World) -> None:
    peer = await world.start_peer(run=False)
    await established(world)
    await peer.send([1, ip.HELLO, peer.identity.credential.to_array()])
    with trio.fail_after(5):
        while (msg := await peer.receive()) is not None and msg[1] != ip.CLOSE:
            pass
    assert msg is not None and msg[2] == ip.CODE["UNEXPECTED_MESSAGE"]


async def test_non_shortest_encoding_is_accepted(world: World) -> None:
    """Ping(seq=1) with seq as uint8 (cc 01) instead of a fixint.

    Section 5.3 does not list non-shortest forms as decode errors (7.1 speaks of
    "a canonical-encoding violation (section 5.3)"): the node decodes and answers.
    """
    peer = await world.start_peer(run=False)
    await established(world)
    async with peer._send_lock:
        await peer.stream.send_all(ip.frame(peer.hs.encrypt(bytes.fromhex("930102cc01"))))
    with trio.fail_after(5):
        while (msg := await peer.receive()) is not None and msg[1] not in (ip.CLOSE, ip.PONG):
            pass
    assert msg == [1, ip.PONG, 1]


async def test_rekey_both_directions(nursery: trio.Nursery, world: World) -> None:
    """Section 8.2, with a node that rekeys its sending direction every 3 messages."""
    limits = NodeLimits(timeouts=Timeouts(rekey_messages=3))
    other = await start_counterpart(nursery, world.community, "rekeyer", limits)
    peer = ip.Peer(
        ip.make_identity(world.issuer_seed, world.community.name, "indie",
                         valid_from=int(NOW) - 86400, valid_until=int(NOW) + 86400),
        world.community.name, {ip.ed25519_public(world.issuer_seed)}, clock=other.node.clock.now)
    stream = await trio.open_tcp_stream("127.0.0.1", other.port)
    world.streams.append(stream)
    await peer.connect(stream)
    nursery.start_soon(peer.run)
    for seq in range(1, 9):
        await peer.send([1, ip.PING, seq])
        await peer.wait_for(lambda m, seq=seq: m[1] == ip.PONG and m[2] == seq)
        if seq % 3 == 0:
            await peer.send([1, ip.REKEY])  # our direction, at our own pace
    assert any(m[1] == ip.REKEY for m in peer.inbox), "the node never rekeyed"


async def test_wrong_community_fails_silently(world: World) -> None:
    peer = ip.Peer(
        ip.make_identity(world.issuer_seed, "othercommunity", "indie",
                         valid_from=int(NOW) - 86400, valid_until=int(NOW) + 86400),
        "othercommunity", {ip.ed25519_public(world.issuer_seed)}, clock=world.ours.node.clock.now)
    stream = await trio.open_tcp_stream("127.0.0.1", world.ours.port)
    world.streams.append(stream)
    with pytest.raises(ip.HandshakeError) as err:
        await peer.connect(stream)
    assert err.value.reason == ip.CODE["HANDSHAKE_FAILED"]  # cannot decrypt msg2


async def test_snapshot_details(world: World) -> None:
    """Section 12.3 clarifications: no snapshot for an empty book; snapshot hops."""
    peer = await world.start_peer()  # sent OrdersRequest; the node's book is empty
    await established(world)
    await peer.send([1, ip.PING, 77])
    await peer.wait_for(lambda m: m[1] == ip.PONG and m[2] == 77)
    # the node handles our messages in order, so an answer would have come before the Pong
    assert not any(m[1] == ip.ORDERS_SNAPSHOT for m in peer.inbox)
    order = await world.ours.market.post("sell", SLOT_START, 1000, 80_000)
    await peer.wait_for(lambda m: m[1] == ip.ORDER_GOSSIP)
    await peer.send([1, ip.ORDERS_REQUEST])
    snap = await peer.wait_for(lambda m: m[1] == ip.ORDERS_SNAPSHOT)
    assert [(body[0][0], body[2]) for body in snap[2]] == [(order.order_id, 1)]


@pytest.mark.parametrize("what", ["unaligned", "expiry_after_start", "wh_over_order", "same_parties"])
async def test_cross_field_constraints_are_decode_errors(world: World, what: str) -> None:
    """Section 12.2 clarification: table constraints close the session with INVALID_MESSAGE."""
    peer = await world.start_peer(run=False)
    await established(world)
    seed = peer.identity.sign_seed
    if what in ("unaligned", "expiry_after_start"):
        start = SLOT_START + (1 if what == "unaligned" else 0)
        expiry = start - 300 if what == "unaligned" else start + 10
        body = [os.urandom(16), "indie", "sell", start, SLOT, 100, 5000, expiry]
        sig = ip.ed25519_sign(seed, ip.signed_bytes(ip.ORDER_DOMAIN, body))
        await peer.send([1, ip.ORDER_GOSSIP, [*body, sig], peer.identity.credential.to_array(), 8])
    else:
        order = await world.ours.market.post("sell", SLOT_START, 1000, 80_000)
        buyer, wh = ("indie", 2000) if what == "wh_over_order" else ("node", 10)
        terms = [os.urandom(16), order.order_id, 1000, "node", buyer, SLOT_START, SLOT, wh, 80_000,
                 peer.now()]
        await peer.send([1, ip.TAKE, terms, ip.ed25519_sign(seed, ip.terms_bytes(terms))])
    with trio.fail_after(5):
        while (msg := await peer.receive()) is not None and msg[1] != ip.CLOSE:
            pass
    assert msg is not None and msg[2] == ip.CODE["INVALID_MESSAGE"]


# --- 4. negative: credential for another Noise key -------------------------------------------------


async def test_key_mismatch_is_refused_with_close(world: World) -> None:
    other_pub = ip.x25519_public(os.urandom(32))
    # request_orders=False: send nothing after msg3, so the node reads all we sent and
    # closes with a FIN; frames it leaves unread make TCP reset, which can lose the Close.
    peer = await world.start_peer("mallory", run=False, credential_noise_pk=other_pub,
                                  request_orders=False)
    # From the initiator's point of view the session is up; the first transport frame
    # is the responder's Close (section 4.3 step 5).
    with trio.fail_after(5):
        msg = await peer.receive()
    assert msg is not None and msg[1] == ip.CLOSE
    assert msg[2] == ip.CODE["KEY_MISMATCH"] == 11
    with trio.fail_after(5):
        assert await peer.receive() is None  # then EOF
    assert "mallory" not in world.ours.node.sessions


# --- 5. the worked examples, from our own code ------------------------------------------------------


def doc_blocks(kind: str) -> dict[str, bytes]:
    text = DOC.read_text(encoding="utf-8")
    return {m.group(1): bytes.fromhex("".join(m.group(2).split()))
            for m in re.finditer(r"```" + kind + r' title="([^"]+)"\n(.*?)```', text, re.S)}


def example_identities() -> tuple[Any, Any, dict[str, bytes]]:
    b = doc_blocks("hex")
    common = dict(valid_from=1767225600, valid_until=1798761600)
    alice = ip.make_identity(b["issuer-ed25519-seed"], "example", "alice",
                             metering_point="EAN871687400000000011", sign_seed=b["initiator-ed25519-seed"],
                             noise_private=b["initiator-x25519-static"], **common)
    bob = ip.make_identity(b["issuer-ed25519-seed"], "example", "bob",
                           metering_point="EAN871687400000000028", sign_seed=b["responder-ed25519-seed"],
                           noise_private=b["responder-x25519-static"], **common)
    return alice, bob, b


def test_worked_example_section_11() -> None:
    alice, bob, b = example_identities()
    assert ip.ed25519_public(b["issuer-ed25519-seed"]) == b["issuer-public-key"]
    assert alice.sign_pk == b["initiator-ed25519-public"]
    assert alice.noise_public == b["initiator-x25519-static-public"]
    assert ip.x25519_public(b["initiator-x25519-ephemeral"]) == b["initiator-x25519-ephemeral-public"]
    assert bob.sign_pk == b["responder-ed25519-public"]
    assert bob.noise_public == b["responder-x25519-static-public"]
    assert ip.x25519_public(b["responder-x25519-ephemeral"]) == b["responder-x25519-ephemeral-public"]
    assert alice.credential.encode() == b["initiator-credential"]
    assert bob.credential.encode() == b["responder-credential"]
    assert alice.credential.credential_id == b["initiator-credential-id"]
    assert bob.credential.credential_id == b["responder-credential-id"]
    hello_a = ip.pack([1, ip.HELLO, alice.credential.to_array()])
    hello_b = ip.pack([1, ip.HELLO, bob.credential.to_array()])
    assert hello_a == b["initiator-hello"] and hello_b == b["responder-hello"]

    ini = ip.Handshake(initiator=True, static_private=alice.noise_private, community="example",
                       ephemeral=b["initiator-x25519-ephemeral"])
    res = ip.Handshake(initiator=False, static_private=bob.noise_private, community="example",
                       ephemeral=b["responder-x25519-ephemeral"])
    msg1 = ip.frame(ini.write(b""))
    assert msg1 == b["msg1"]
    assert res.read(msg1[2:]) == b""
    msg2 = ip.frame(res.write(hello_b))
    assert msg2 == b["msg2"]
    assert ini.read(msg2[2:]) == hello_b and ini.rs == bob.noise_public
    msg3 = ip.frame(ini.write(hello_a))
    assert msg3 == b["msg3"]
    assert res.read(msg3[2:]) == hello_a and res.rs == alice.noise_public
    now = 1780000000
    trust = {b["issuer-public-key"]}
    assert bob.credential.check(now=now, community="example", trusted=trust, rs=ini.rs) is None
    assert alice.credential.check(now=now, community="example", trusted=trust, rs=res.rs) is None
    assert ini.handshake_hash == res.handshake_hash == b["handshake-hash"]

    assert ip.pack([1, ip.PING, 1]) == b["ping-plaintext"]
    ping = ip.frame(ini.encrypt(b["ping-plaintext"]))
    assert ping == b["ping-frame"]
    assert ip.decode_message(res.decrypt(ping[2:])) == [1, ip.PING, 1]
    assert ip.pack([1, ip.PONG, 1]) == b["pong-plaintext"]
    assert ip.frame(res.encrypt(b["pong-plaintext"])) == b["pong-frame"]
    assert ip.pack([1, ip.CLOSE, 0, "bye"]) == b["close-plaintext"]
    assert ip.frame(ini.encrypt(b["close-plaintext"])) == b["close-frame"]


def test_trading_examples_section_12_6() -> None:
    alice, bob, _ = example_identities()
    m = doc_blocks("msgpack")
    now = 1780000000
    order = ip.Order.create(alice.sign_seed, order_id=b"\x01" * 16, member_id="alice", side="sell",
                            slot_start=1780002000, slot_len=900, wh=1500, price=93000,
                            expiry=1780001700)
    assert ip.pack(order.to_array()) == m["trading-order"]
    gossip = [1, ip.ORDER_GOSSIP, order.to_array(), alice.credential.to_array(), 8]
    assert ip.pack(gossip) == m["trading-order-gossip"]
    assert ip.pack([1, ip.ORDERS_REQUEST]) == m["trading-orders-request"]
    seller, buyer = ip.parties(order, "bob")
    terms = [b"\x02" * 16, order.order_id, order.wh, seller, buyer, order.slot_start, order.slot_len,
             1000, order.price, now]
    buyer_sig = ip.ed25519_sign(bob.sign_seed, ip.terms_bytes(terms))
    assert ip.pack([1, ip.TAKE, terms, buyer_sig]) == m["trading-take"]
    seller_sig = ip.ed25519_sign(alice.sign_seed, ip.terms_bytes(terms))
    assert ip.pack([1, ip.TRADE_ACCEPTED, [terms, seller_sig, buyer_sig]]) == m["trading-trade-accepted"]
    refused = [1, ip.TRADE_REFUSED, b"\x03" * 16, ip.CODE["INSUFFICIENT"], 500, "only 500 Wh remain"]
    assert ip.pack(refused) == m["trading-trade-refused"]
    # CancelGossip: the example's issued_at is not stated in the text; decode it.
    cg = ip.decode_message(m["trading-cancel-gossip"])
    cancel = cg[2]
    assert cancel[:2] == [order.order_id, "alice"] and cg[3] == 8
    body = [order.order_id, "alice", cancel[2]]
    assert ip.ed25519_sign(alice.sign_seed, ip.signed_bytes(ip.CANCEL_DOMAIN, body)) == cancel[3]
    # and each decodes under our decoder rules
    for name, data in m.items():
        assert ip.pack(ip.unpack(data)) == data, name


def test_pseudonymous_examples_section_12_8() -> None:
    """The spec's pseudonymous examples decode under this peer's rules and check from the text:
    the token is RSASSA-PSS (SHA-384, salt 48) by the epoch key, the order id and name derive
    from the pseudonym's key, and the order is signed by it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    m = doc_blocks("msgpack")
    key = ip.decode_message(m["trading-anon-epoch-key-announce"])[2]
    community, epoch, modulus, _quota, issuer_pk, signature = key
    assert ip.ed25519_verify(issuer_pk, signature, ip.signed_bytes("p2pd/epoch-key/1", key[:5]))
    gossip = ip.decode_message(m["trading-anon-order-gossip"])
    order, (p_epoch, sign_pk, box_pk, token) = ip.Order.from_array(gossip[2]), gossip[3]
    message = ip.signed_bytes("p2pd/pseudonym/1", [community, p_epoch, sign_pk, box_pk])
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(modulus, "big")).public_key()
    public.verify(token, message, padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
                  hashes.SHA384())
    order_id = ip.blake2b256(ip.pack(["p2pd/anon-order-id/1", sign_pk]))[:16]
    assert order.order_id == order_id and order.member_id == "ps:" + order_id.hex() and p_epoch == epoch
    assert order.verify(sign_pk)
    intent = ip.decode_message(m["trading-anon-take-intent"])
    assert intent[2] == order_id and intent[5] == 8
    proof = ip.decode_message(m["trading-anon-owner-proof"])
    assert proof[2] == order_id and len(proof[3]) == 64
    take = ip.decode_message(m["trading-anon-take"])
    assert take[2][1] == order_id and take[2][3:5] == ["alice", "bob"]


def test_pseudonym_issuance_examples_section_12_8() -> None:
    """The issuance examples decode under this peer's rules; the grant's signature is the
    RSA signature of the ask's blinded value under the documented epoch key."""
    m = doc_blocks("msgpack")
    ask = ip.decode_message(m["trading-anon-pseudonym-ask"])
    grant = ip.decode_message(m["trading-anon-pseudonym-grant"])
    refused = ip.decode_message(m["trading-anon-pseudonym-refused"])
    key = ip.decode_message(m["trading-anon-epoch-key-announce"])[2]
    assert ask[2] == grant[2] == refused[2] and grant[3] == key and ask[3] == key[1]
    n = int.from_bytes(key[2], "big")
    assert pow(int.from_bytes(grant[4][0], "big"), 65537, n) == int.from_bytes(ask[4][0], "big")
    assert ip.REASONS[refused[3]] == "RATE_LIMITED" and grant[5] == 255
