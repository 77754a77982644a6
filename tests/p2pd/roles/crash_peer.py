"""A trading node as its own process, for the kill -9 tests of both sides.

Usage: python crash_peer.py SPEC.json ROLE [MODE]

SPEC holds the identity of both members (hex seeds and credentials), the
issuer key, the community, both database URLs, the seller's port, and the
order. ROLE is "seller" or "buyer". Each runs a node with its market, the
group-commit writer and reconciliation on a SQLite file, as the daemon does.

* seller: reloads its orders, posts the order if it is not stored yet,
  listens on the given port and prints "READY".
* buyer: reloads its pending takes, dials the seller (retrying), prints
  "READY", then in MODE "burst" takes TAKE_WH again and again (8 takers in
  parallel) until the order is sold out; in MODE "quiet" it only keeps the
  session up, so pending takes and reconciliation can finish.
"""

from __future__ import annotations

import json
import os
import sys

import trio

from p2pd.errors import NotConnected, P2pdError, PeerGone
from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.net.listener import dial, serve_p2p
from p2pd.net.node import open_node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.reconcile import Reconciler
from p2pd.roles.trading import Market, MarketRules
from p2pd.sim.quiet import until
from protocol import Credential, SigningKey, TrustPolicy
from store import open_repository

TAKE_WH = 10


async def main(spec: dict[str, object], role: str, mode: str) -> None:
    me = spec[role]
    assert isinstance(me, dict)
    keys = NodeKeys(SigningKey.from_seed(bytes.fromhex(me["signing"])), bytes.fromhex(me["noise"]))
    identity = NodeIdentity(keys, Credential.decode(bytes.fromhex(me["credential"])))
    policy = TrustPolicy(str(spec["community"]), frozenset({bytes.fromhex(str(spec["issuer"]))}))
    repo = open_repository(str(me["db"]))
    order_id = bytes.fromhex(str(spec["order_id"]))
    async with open_node(identity, policy) as node:
        writer = ReceiptWriter(repo)
        await node.nursery.start(writer.run)
        market = Market(node, repo, writer, rules=MarketRules(take_timeout=1.0, take_attempts=1))
        await market.load()
        Reconciler(node, repo, writer.commit, credentials=market.credentials)
        if role == "seller":
            if order_id not in market.book and repo.get_order(order_id) is None:
                await market.post("sell", int(str(spec["slot_start"])), int(str(spec["wh"])),
                                  int(str(spec["price"])), order_id=order_id)
            await node.nursery.start(serve_p2p, node, "127.0.0.1", int(str(spec["port"])))
            print("READY", flush=True)
            await trio.sleep_forever()
        with trio.fail_after(20):
            while "seller" not in node.sessions:
                try:
                    await dial(node, "127.0.0.1", int(str(spec["port"])), connect_timeout=2.0)
                except (OSError, P2pdError, trio.TooSlowError):
                    await trio.sleep(0.05)
        print("READY", flush=True)
        if mode == "quiet":
            await trio.sleep_forever()
        with trio.fail_after(10):
            await until(lambda: order_id in market.book or order_id in market.cancelled)

        async def taker() -> None:
            for _ in range(100_000):  # bounded
                if order_id not in market.book:
                    return
                try:
                    await market.take(order_id, TAKE_WH)
                except (P2pdError, NotConnected, PeerGone):
                    await trio.sleep(0.01)

        async with trio.open_nursery() as takers:
            for _ in range(8):
                takers.start_soon(taker)
        print("SOLD_OUT", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    trio.run(main, spec, sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "burst")
