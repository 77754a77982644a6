"""Replica holders keep evidence, not content (docs/protocol.md 15, "Sealed entries").

A holder keeps each entry of another member's log as its digest and the
receipt sealed to the receipt's signers: it checks the chain against the
member's signed heads, and its store names neither the counterparty nor the
Wh or the price. A party whose own copy is lost fetches its receipt from
the holders and verifies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from p2pd_test_helpers import NOW, Community, Identity, eventually, link

from p2pd.market.receipt_log import open_entry
from p2pd.net.node import Node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.replication import LoggingWriter, Replication
from p2pd.roles.trading import Market, MarketRules
from protocol import Receipt, SealedEntry, pack
from store import MemoryRepository

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT
WH, PRICE = 70_013, 80_017  # numbers that appear nowhere else (5 bytes packed: no chance match)
ALICE, BOB = "alice-north", "bob-south"  # long enough not to turn up in random bytes


@dataclass
class Member:
    node: Node
    repo: MemoryRepository
    rep: Replication
    market: Market


async def member(make_node: Any, nursery: trio.Nursery, name: str, ident: Identity | None = None) -> Member:
    node = await make_node(name, ident=ident)
    repo = MemoryRepository()
    inner = ReceiptWriter(repo)
    await nursery.start(inner.run)
    rep = Replication(node, replicas=2, repo=repo)
    market = Market(node, repo, LoggingWriter(inner, rep), rules=MarketRules(take_timeout=2.0))  # type: ignore[arg-type]
    return Member(node, repo, rep, market)


def holdings(m: Member, members: tuple[str, ...]) -> bytes:
    """Everything ``m`` keeps about others' receipts: the entries it holds, with their heads,
    and every receipt row of its own store."""
    out = b""
    for who in members:
        for rec in m.repo.replicas(who):
            out += rec.entry + rec.head
    for r in m.repo.receipts():
        out += r.encoded
    return out


async def test_holders_keep_digests_and_sealed_receipts_and_a_party_gets_its_receipt_back(
        make_node: Any, nursery: trio.Nursery, community: Community, autojump_clock: Any) -> None:
    bob_ident = community.member(BOB)
    names = {"alice": ALICE, "bob": BOB, "r1": "r1", "r2": "r2", "r3": "r3"}
    m = {n: await member(make_node, nursery, name, bob_ident if n == "bob" else None) for n, name in names.items()}
    await link(m["bob"].node, m["alice"].node)
    for r in ("r1", "r2", "r3"):
        await link(m["alice"].node, m[r].node)
        await link(m["bob"].node, m[r].node)
    order = await m["alice"].market.post("sell", SLOT_START, 100_000, PRICE)
    await eventually(lambda: order.order_id in m["bob"].market.book)
    receipt = await m["bob"].market.take(order.order_id, WH)
    encoded = receipt.encode()
    await eventually(lambda: sum(m[r].rep.counters["replicas_held"] for r in ("r1", "r2", "r3")) == 4)
    alice_head = m["alice"].rep.log.head
    for r in ("r1", "r2", "r3"):
        held = holdings(m[r], (ALICE, BOB))
        # No counterparty, no Wh, no price, no term of the receipt: only digests,
        # boxes it cannot open and the owners' signed heads.
        for needle in (encoded, receipt.terms.encode(), pack(WH), pack(PRICE), receipt.terms.trade_id):
            assert needle not in held, (r, needle)
        for who, other in ((ALICE, BOB), (BOB, ALICE)):
            for rec in m[r].repo.replicas(who):
                assert other.encode() not in rec.entry + rec.head
                assert open_entry(SealedEntry.decode(rec.entry), m[r].node.identity.keys.noise_private) is None
        # ...yet it checks the chain: each entry's digest leads to the owner's signed head.
        assert m[r].rep.heads.latest(ALICE) == 1 and not m[r].rep.heads.forks
    # bob loses his disk and alice goes away. bob, again, with an empty store,
    # reaches only the holders: he fetches alice's log from them, verified
    # against her signed head, and opens the one entry sealed to him.
    await m["alice"].node.aclose()
    await m["bob"].node.aclose()
    bob = await member(make_node, nursery, BOB, bob_ident)
    for r in ("r1", "r2", "r3"):
        await link(bob.node, m[r].node)
    await bob.rep.fetcher.follow(ALICE)
    assert await bob.rep.fetcher.fetch(ALICE, beyond_known=True) == 1
    assert bob.rep.fetcher.follows[ALICE].head_hash == alice_head.head_hash
    got = await bob.rep.own_receipts(ALICE)
    assert got == [(1, encoded)]
    alice_cred = bob.rep.credentials[ALICE]  # it came with the page
    Receipt.decode(got[0][1]).verify(alice_cred.sign_pk, bob_ident.credential.sign_pk)
