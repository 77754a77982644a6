"""A seller node as its own process, for the kill -9 test.

Usage: python crash_seller.py SPEC.json
SPEC holds the identity (hex seeds and credential), the issuer key, the
community, the database URL, and the order to offer. On start the node
reloads its orders from the database, posts the order if it is not there
yet, listens on 127.0.0.1 port 0 and prints "READY <port>".
"""

from __future__ import annotations

import json
import sys

import trio

from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.net.listener import serve_p2p
from p2pd.net.node import open_node
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market
from protocol import Credential, SigningKey, TrustPolicy
from store import open_repository


async def main(spec: dict[str, object]) -> None:
    keys = NodeKeys(SigningKey.from_seed(bytes.fromhex(str(spec["signing"]))),
                    bytes.fromhex(str(spec["noise"])))
    identity = NodeIdentity(keys, Credential.decode(bytes.fromhex(str(spec["credential"]))))
    policy = TrustPolicy(str(spec["community"]), frozenset({bytes.fromhex(str(spec["issuer"]))}))
    repo = open_repository(str(spec["db"]))
    async with open_node(identity, policy) as node:
        writer = ReceiptWriter(repo)
        await node.nursery.start(writer.run)
        market = Market(node, repo, writer)
        await market.load()
        order_id = bytes.fromhex(str(spec["order_id"]))
        if order_id not in market.book and repo.get_order(order_id) is None:
            await market.post("sell", int(spec["slot_start"]), int(spec["wh"]),  # type: ignore[call-overload]
                              int(spec["price"]), order_id=order_id)  # type: ignore[call-overload]
        listeners = await node.nursery.start(serve_p2p, node, "127.0.0.1", 0)
        print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        trio.run(main, json.load(fh))
