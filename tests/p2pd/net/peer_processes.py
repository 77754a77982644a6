"""Processes for the multi-process network tests (not collected by pytest).

``python peer_processes.py hub``: reads one JSON line from stdin (community,
issuer key, identity, ``PolicingConfig`` and ``NodeLimits`` fields), runs a node on 127.0.0.1:0 with a policer, prints
``{"port": N}``, then answers each ``status`` line on stdin with a JSON line
(the node's counters and log figures) until stdin closes.

``python peer_processes.py attacker``: reads one JSON line (port, source
addresses, seconds, rate, how many connections to hold open), opens
connections round robin from those addresses, sends a valid Noise message 1
on each and never finishes; prints ``{"attempts": N, ...}`` at the end.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import trio  # noqa: E402

from p2pd.net.identity import NodeIdentity, NodeKeys  # noqa: E402
from p2pd.net.listener import serve_p2p  # noqa: E402
from p2pd.net.node import Node, NodeLimits  # noqa: E402
from p2pd.net.policing import PolicingConfig, attach_policer  # noqa: E402
from protocol import Credential, NoiseHandshake, SigningKey, TrustPolicy, frame  # noqa: E402


def hub(cfg: dict[str, Any]) -> None:
    seed, noise, cred = (bytes.fromhex(x) for x in cfg["identity"])
    ident = NodeIdentity(NodeKeys(SigningKey.from_seed(seed), noise), Credential.decode(cred))
    policy = TrustPolicy(cfg["community"], frozenset({bytes.fromhex(cfg["issuer"])}))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = Node(ident, policy, nursery, limits=NodeLimits(**cfg.get("limits", {})))
            attach_policer(node, PolicingConfig(**cfg.get("policing", {})))
            listeners = await nursery.start(serve_p2p, node, "127.0.0.1", 0)
            print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                st = node.status()
                print(json.dumps({"counters": st["counters"], "log": st.get("log"),
                                  "sessions": sorted(node.sessions)}), flush=True)

    trio.run(main)


def attacker(cfg: dict[str, Any]) -> None:
    msg1 = frame(NoiseHandshake(initiator=True, static_private=bytes(range(1, 33)),
                                community=cfg["community"]).write_message(b""))
    hosts: list[str] = cfg["hosts"]
    sel = selectors.DefaultSelector()
    held: deque[socket.socket] = deque()
    waiting: set[socket.socket] = set()
    attempts = failed = 0
    t0 = time.monotonic()
    end = t0 + cfg["seconds"]

    def drop(s: socket.socket) -> None:
        if s in waiting:
            waiting.discard(s)
            sel.unregister(s)
        s.close()

    while (now := time.monotonic()) < end and attempts < 1_000_000:
        due = int((now - t0) * cfg["rate"]) + 1
        while attempts < due:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.bind((hosts[attempts % len(hosts)], 0))
                s.connect_ex(("127.0.0.1", cfg["port"]))
                try:
                    s.send(msg1)
                except OSError:
                    waiting.add(s)
                    sel.register(s, selectors.EVENT_WRITE)
                held.append(s)
            except OSError:
                failed += 1
                s.close()
            attempts += 1
            while len(held) > cfg["hold"]:
                drop(held.popleft())
        for key, _ in sel.select(timeout=0.001):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            waiting.discard(s)
            sel.unregister(s)
            try:
                s.send(msg1)
            except OSError:
                pass
    for s in held:
        drop(s)
    print(json.dumps({"attempts": attempts, "failed": failed,
                      "seconds": time.monotonic() - t0}), flush=True)


if __name__ == "__main__":
    config = json.loads(sys.stdin.readline())
    {"hub": hub, "attacker": attacker}[sys.argv[1]](config)
