"""Handshakes per second over loopback TCP against the cryptographic ceiling.

Measured in one run:

* ``ceiling``: the bare in-memory Noise XX handshake (both sides) plus the
  two credential signature checks, no I/O, no framing — the cryptographic work
  a handshake cannot avoid.
* ``tcp``: complete handshakes over loopback TCP, end to end: a client node
  dials a listening node, both run the full session code (framing, Noise,
  credential checks including key binding, node registry), then close.
  Client and server share this one process, like the ceiling's both sides.
* ``messages``: encrypted 200-byte messages per second over one session.

Usage: python bench/handshake.py [--seconds S]
Last line of output: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import trio

from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.net.listener import dial, serve_p2p
from p2pd.net.node import Node, NodeLimits
from p2pd.net.peer import PeerConnection
from protocol import (
    Credential,
    NoiseHandshake,
    SigningKey,
    TradeRefused,
    TrustPolicy,
    check_credential,
)

COMMUNITY = "bench"


def member(issuer: SigningKey, name: str, now: int) -> NodeIdentity:
    keys = NodeKeys.generate()
    cred = Credential.issue(issuer, community=COMMUNITY, member_id=name, role="prosumer",
                            metering_point="EAN1", sign_pk=keys.signing.public,
                            noise_pk=keys.noise_public, valid_from=now - 60, valid_until=now + 86400)
    return NodeIdentity(keys, cred)


def ceiling(a: NodeIdentity, b: NodeIdentity, issuer: SigningKey, seconds: float) -> float:
    trusted = {issuer.public}
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        i = NoiseHandshake(initiator=True, static_private=a.keys.noise_private, community=COMMUNITY)
        r = NoiseHandshake(initiator=False, static_private=b.keys.noise_private, community=COMMUNITY)
        r.read_message(i.write_message(b""))
        i.read_message(r.write_message(b""))
        check_credential(b.credential, now=time.time(), community=COMMUNITY, trusted_issuers=trusted)
        r.read_message(i.write_message(b""))
        check_credential(a.credential, now=time.time(), community=COMMUNITY, trusted_issuers=trusted)
        n += 1
    return n / (time.perf_counter() - start)


async def tcp_handshakes(issuer: SigningKey, seconds: float, clients: int) -> dict[str, float]:
    """Each handshake uses a member never seen before, with its own trust
    policy, so both credential signatures are really verified every time
    (nodes cache verified credentials; re-dialling would skip that work)."""
    now = int(time.time())
    policy = TrustPolicy(COMMUNITY, frozenset({issuer.public}))
    limits = NodeLimits(max_connections=1024, max_handshakes=256)
    # Minted before timing: issuing credentials is the operator's work.
    pool = [member(issuer, f"c{i}", now) for i in range(int(seconds * 1500) + 200)]
    fresh = iter(pool)
    done = 0
    async with trio.open_nursery() as nursery:
        server = Node(member(issuer, "server", now), dataclasses.replace(policy), nursery,
                      limits=limits)
        listeners = await nursery.start(serve_p2p, server, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        deadline = time.perf_counter() + seconds

        async def dialer() -> None:
            nonlocal done
            for ident in fresh:
                if time.perf_counter() >= deadline:
                    return
                node = Node(ident, dataclasses.replace(policy), nursery, limits=limits)
                conn = await dial(node, "127.0.0.1", port)
                done += 1
                await conn.close()
                await conn.finished.wait()

        start = time.perf_counter()
        async with trio.open_nursery() as inner:
            for _ in range(clients):
                inner.start_soon(dialer)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return {"handshakes": done, "seconds": elapsed, "per_s": done / elapsed}


async def messages(issuer: SigningKey, count: int) -> dict[str, float]:
    now = int(time.time())
    policy = TrustPolicy(COMMUNITY, frozenset({issuer.public}))
    received = 0
    all_in = trio.Event()
    msg = TradeRefused(b"\x00" * 16, 0, 0, "x" * 175)  # 200-byte plaintext

    async def count_it(conn: PeerConnection, m: TradeRefused) -> None:
        nonlocal received
        received += 1
        if received == count:
            all_in.set()

    async with trio.open_nursery() as nursery:
        server = Node(member(issuer, "server", now), policy, nursery)
        server.handle(TradeRefused, count_it)
        listeners = await nursery.start(serve_p2p, server, "127.0.0.1", 0)
        client = Node(member(issuer, "client", now), policy, nursery)
        conn = await dial(client, "127.0.0.1", listeners[0].socket.getsockname()[1])
        start = time.perf_counter()
        for _ in range(count):
            await conn.send(msg)
        with trio.fail_after(60):
            await all_in.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    from protocol import encode_message

    return {"messages": count, "seconds": elapsed, "per_s": count / elapsed,
            "plaintext_bytes": len(encode_message(msg))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    issuer = SigningKey.generate()
    now = int(time.time())
    a, b = member(issuer, "a", now), member(issuer, "b", now)
    ceil = ceiling(a, b, issuer, args.seconds)
    tcp = trio.run(tcp_handshakes, issuer, args.seconds, args.clients)
    ceil_after = ceiling(a, b, issuer, args.seconds / 2)  # the machine is shared: bracket it
    ceil_mean = (ceil + ceil_after) / 2
    msgs = trio.run(messages, issuer, args.messages)
    ratio = tcp["per_s"] / ceil_mean
    print(f"ceiling (in-memory Noise XX both sides + 2 credential checks): {ceil_mean:.0f}/s "
          f"(before {ceil:.0f}, after {ceil_after:.0f})")
    print(f"loopback TCP, end to end: {tcp['handshakes']} handshakes in {tcp['seconds']:.2f} s = "
          f"{tcp['per_s']:.0f}/s with {args.clients} concurrent dialers")
    print(f"ratio: {ratio:.2f} (goal >= 0.7)")
    print(f"encrypted {msgs['plaintext_bytes']}-byte messages over one session: {msgs['per_s']:.0f}/s")
    print(json.dumps({
        "handshakes_per_s": round(tcp["per_s"], 1),
        "ceiling_per_s": round(ceil_mean, 1),
        "ratio": round(ratio, 3),
        "messages_200b_per_s": round(msgs["per_s"], 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
