"""Attack benchmark: does a policed node keep serving honest peers?

One *hub* node (this process) listens on loopback TCP with the default
:class:`p2pd.net.policing.PolicingConfig`. Other processes (spawned, so their CPU
is not the hub's):

* ``honest``: three members sending gossip at 80% of their allowance;
* ``flooder``: one authenticated member sending at 20x its allowance, never
  obeying feedback, reconnecting when cut off;
* ``stranger``: opens TCP connections from 127.0.0.2 as fast as it can and
  never sends a byte (stalled handshakes).

Phases: (0) in-process tracemalloc of 100 stalled handshakes; (1) honest
traffic alone; (2) honest traffic under both attacks; (3) the stranger alone,
to price a rejected unauthenticated attempt on both sides.

Figures: ``honest_goodput_ratio`` (honest msgs/s delivered in phase 2 over
phase 1), ``cutoff_s`` (flooder's first message to its session being closed),
``rejection_cost_ratio`` (hub CPU per attempt in phase 3 over the stranger's
CPU per attempt; includes the few attempts the per-host limit admits, so it is
an upper bound), ``bytes_per_stalled_handshake`` and ``peak_rss_bytes`` of
the hub. Prints a summary, then one JSON object as the last line.

Run: ``python bench/attack.py [--quick]`` (about 30 s; --quick about 15 s).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import resource
import socket
import struct
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402
import trio.testing  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pd.errors import PeerGone  # noqa: E402
from p2pd.events import Banned  # noqa: E402
from p2pd.net.identity import NodeIdentity, NodeKeys  # noqa: E402
from p2pd.net.listener import dial, serve_p2p  # noqa: E402
from p2pd.net.node import Node, NodeLimits  # noqa: E402
from p2pd.net.peer import PeerConnection  # noqa: E402
from p2pd.net.policing import PolicingConfig, attach_policer  # noqa: E402
from protocol import (  # noqa: E402
    MESSAGE_TYPES,
    U32,
    Credential,
    Int,
    Message,
    NoiseHandshake,
    SigningKey,
    TrustPolicy,
    f,
    frame,
    register,
)

COMMUNITY = "benchcommunity"
CONFIG = PolicingConfig()
HONEST = ("alice", "bob", "carol")
HONEST_RATE = 0.8 * CONFIG.gossip_rate
FLOOD_RATE = 20 * CONFIG.gossip_rate


@dataclass(frozen=True)
class _Gossip(Message):
    TYPE: ClassVar[int] = 250
    CATEGORY: ClassVar[str] = "gossip"
    seq: int = f(Int(0, U32))


Gossip: Any = MESSAGE_TYPES.get(250) or register(_Gossip)

# --- identities passed to child processes as plain bytes --------------------

IdentityBlob = tuple[bytes, bytes, bytes]  # signing seed, noise private, credential


def make_identity(issuer: SigningKey, member_id: str, now: float) -> IdentityBlob:
    signing = SigningKey.generate()
    noise = X25519PrivateKey.generate()
    cred = Credential.issue(
        issuer, community=COMMUNITY, member_id=member_id, role="prosumer",
        metering_point=f"EAN{abs(hash(member_id)) % 10**15:015d}", sign_pk=signing.public,
        noise_pk=noise.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        valid_from=int(now) - 3600, valid_until=int(now) + 86400,
    )
    return (signing.seed(), noise.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            cred.encode())


def load_identity(blob: IdentityBlob) -> NodeIdentity:
    seed, noise, cred = blob
    return NodeIdentity(NodeKeys(SigningKey.from_seed(seed), noise), Credential.decode(cred))


def quiet_logs() -> None:
    # Keep the cost of logging each refusal (it is real), but not the noise.
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    root = logging.getLogger("p2pd")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


# --- child processes ----------------------------------------------------------


def run_honest(blobs: list[IdentityBlob], issuer_pk: bytes, port: int, start: float,
               seconds: float, out: Any) -> None:
    quiet_logs()
    policy = TrustPolicy(COMMUNITY, frozenset({issuer_pk}))

    async def main() -> None:
        sent: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:
            for blob in blobs:
                node = Node(load_identity(blob), policy, nursery)
                policer = attach_policer(node, CONFIG)

                async def send(node: Node = node, policer: Any = policer) -> None:
                    conn = await dial(node, "127.0.0.1", port)
                    await trio.sleep(max(0.0, start - time.time()))
                    for i in range(int(HONEST_RATE * seconds)):
                        await policer.pace(conn, "gossip")
                        await conn.send(Gossip(i % U32))
                        sent[node.member_id] += 1
                        await trio.sleep(max(0.0, start + (i + 1) / HONEST_RATE - time.time()))

                nursery.start_soon(send)
            await trio.sleep(max(0.0, start + seconds + 0.5 - time.time()))
            nursery.cancel_scope.cancel()
        out.put(("honest", dict(sent)))

    trio.run(main)


def run_flooder(blob: IdentityBlob, issuer_pk: bytes, port: int, start: float, seconds: float,
                out: Any) -> None:
    quiet_logs()
    policy = TrustPolicy(COMMUNITY, frozenset({issuer_pk}))

    async def main() -> None:
        report: dict[str, Any] = {"sent": 0, "sessions": 0, "refused": 0, "close_reasons": []}
        async with trio.open_nursery() as nursery:
            node = Node(load_identity(blob), policy, nursery)
            conn: PeerConnection | None = await dial(node, "127.0.0.1", port)
            report["sessions"] += 1
            await trio.sleep(max(0.0, start - time.time()))
            batch = 10
            i = 0
            while time.time() < start + seconds:
                if conn is None:
                    await trio.sleep(0.5)
                    try:
                        conn = await dial(node, "127.0.0.1", port)
                        report["sessions"] += 1  # the hub may still refuse it (BANNED)
                    except (PeerGone, OSError):
                        report["refused"] += 1
                    continue
                try:
                    for _ in range(batch):
                        await conn.send(Gossip(i % U32))
                        i += 1
                        report["sent"] += 1
                except PeerGone:
                    reason = conn.close_reason or conn.session.close_reason
                    report["close_reasons"].append(reason.name if reason else "?")
                    conn = None
                    continue
                await trio.sleep(max(0.0, start + i / FLOOD_RATE - time.time()))
            nursery.cancel_scope.cancel()
        out.put(("flooder", report))

    trio.run(main)


def run_stranger(port: int, start: float, seconds: float, tag: str, out: Any) -> None:
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    attempts = failed = 0
    open_socks: list[socket.socket] = []
    while time.time() < start + seconds and attempts < 1_000_000:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.2)
        # Give the attacker its cheapest path: the port is picked at connect
        # time (IP_BIND_ADDRESS_NO_PORT) and close sends RST (no TIME_WAIT).
        s.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            open_socks.append(s)  # never send a byte: a stalled handshake
        except OSError:
            failed += 1
            s.close()
        attempts += 1
        if len(open_socks) > 200:
            open_socks.pop(0).close()
    cpu = time.process_time() - cpu0
    for s in open_socks:
        s.close()
    out.put((tag, {"attempts": attempts, "failed": failed, "cpu_s": cpu}))


# --- the hub ------------------------------------------------------------------


async def stalled_handshake_memory(ident: NodeIdentity, policy: TrustPolicy, n: int = 100) -> int:
    """Bytes held per connection stalled after message 1 (the worst handshake state)."""
    async with trio.open_nursery() as nursery:
        node = Node(ident, policy, nursery, limits=NodeLimits(max_handshakes=n + 1,
                                                              max_connections=n + 1))
        attach_policer(node, PolicingConfig(conn_burst_per_host=n + 1))
        clients = []
        msg1 = frame(NoiseHandshake(initiator=True, static_private=bytes(range(32)),
                                    community=COMMUNITY).write_message(b""))
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        for i in range(n):
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(node.accept, server, f"10.0.{i // 250}.{i % 250}:1")
            await client.send_all(msg1)
            clients.append(client)
        for _ in range(10_000):
            if sum(1 for c in node.connections if c.session.state.value == "await_msg3") == n:
                break
            await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()
        stats = tracemalloc.take_snapshot().compare_to(base, "filename")
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    # Subtract the client ends' buffers (msg2 waiting to be read).
    return max(0, sum(s.size_diff for s in stats) // n)


def cpu_now() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def hub_main(quick: bool) -> dict[str, Any]:
    now = time.time()
    issuer = SigningKey.generate()
    policy = TrustPolicy(COMMUNITY, frozenset({issuer.public}))
    hub_ident = load_identity(make_identity(issuer, "hub", now))
    t_base, t_attack, t_reject = (3.0, 4.0, 2.0) if quick else (6.0, 8.0, 3.0)

    per_handshake = await stalled_handshake_memory(hub_ident, policy)

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    received: list[tuple[float, str]] = []
    bans: list[tuple[float, str]] = []
    first_flood: list[float] = []
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        hub = Node(hub_ident, policy, nursery)
        attach_policer(hub, CONFIG)

        async def on_gossip(conn: PeerConnection, msg: Any) -> None:
            t = time.time()
            received.append((t, conn.member_id))
            if conn.member_id == "mallory" and not first_flood:
                first_flood.append(t)

        hub.handle(Gossip, on_gossip)

        async def watch_bans() -> None:
            async with hub.events.subscribe() as events:
                async for event in events:
                    if isinstance(event, Banned):
                        bans.append((time.time(), event.member))

        nursery.start_soon(watch_bans)
        listeners = await nursery.start(serve_p2p, hub, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        honest_blobs = [make_identity(issuer, m, now) for m in HONEST]
        flood_blob = make_identity(issuer, "mallory", now)

        start = time.time() + 2.5  # spawn + import + handshakes
        attack_at = start + t_base
        reject_at = attack_at + t_attack + 1.0
        procs = [
            ctx.Process(target=run_honest, args=(honest_blobs, issuer.public, port, start,
                                                 t_base + t_attack, out)),
            ctx.Process(target=run_flooder, args=(flood_blob, issuer.public, port, attack_at,
                                                  t_attack, out)),
            ctx.Process(target=run_stranger, args=(port, attack_at, t_attack, "stranger_attack", out)),
            ctx.Process(target=run_stranger, args=(port, reject_at, t_reject, "stranger_alone", out)),
        ]
        for p in procs:
            p.start()
        await trio.sleep(max(0.0, reject_at - 0.3 - time.time()))
        refused_before = sum(v for k, v in hub.counters.items() if k.startswith("refused:"))
        failed_before = sum(v for k, v in hub.counters.items() if k.startswith("handshake_failed:"))
        await trio.sleep(max(0.0, reject_at - time.time()))
        cpu0 = cpu_now()
        await trio.sleep(t_reject)
        hub_cpu = cpu_now() - cpu0
        refused = sum(v for k, v in hub.counters.items() if k.startswith("refused:")) - refused_before
        failed_mid = sum(v for k, v in hub.counters.items()
                         if k.startswith("handshake_failed:")) - failed_before
        for _ in range(len(procs)):
            tag, value = await trio.to_thread.run_sync(out.get, True, 30.0)
            results[tag] = value
        for p in procs:
            await trio.to_thread.run_sync(p.join, 10.0)
        admitted_failed = sum(v for k, v in hub.counters.items()
                              if k.startswith("handshake_failed:")) - failed_before
        counters = dict(hub.counters)
        nursery.cancel_scope.cancel()

    def honest_rate(t0: float, t1: float) -> float:
        return sum(1 for t, m in received if m in HONEST and t0 <= t < t1) / (t1 - t0)

    base_rate = honest_rate(start + 0.5, attack_at)
    attack_rate = honest_rate(attack_at + 0.5, attack_at + t_attack)
    ban_times = [t for t, m in bans if m == "mallory"]
    alone = results["stranger_alone"]
    attacker_cpu_per = alone["cpu_s"] / max(1, alone["attempts"])
    # The hub's side is priced per connection it handled in its window
    # (refused, or admitted and later timed out), not per attempt the
    # stranger counted: the two windows are a little offset.
    hub_cpu_per = hub_cpu / max(1, refused + failed_mid)
    return {
        "honest_msgs_per_s_base": round(base_rate, 1),
        "honest_msgs_per_s_attack": round(attack_rate, 1),
        "honest_goodput_ratio": round(attack_rate / base_rate, 3) if base_rate else 0.0,
        "cutoff_s": round(ban_times[0] - first_flood[0], 3) if ban_times and first_flood else None,
        "flooder": results["flooder"],
        "flood_delivered": sum(1 for _, m in received if m == "mallory"),
        "stranger_attack": results["stranger_attack"],
        "stranger_alone": alone,
        "hub_refused_alone": refused,
        "hub_admitted_then_timed_out_alone": admitted_failed,
        "hub_cpu_per_attempt_us": round(hub_cpu_per * 1e6, 2),
        "attacker_cpu_per_attempt_us": round(attacker_cpu_per * 1e6, 2),
        "rejection_cost_ratio": round(hub_cpu_per / attacker_cpu_per, 3) if attacker_cpu_per else None,
        "bytes_per_stalled_handshake": per_handshake,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "hub_counters": {k: v for k, v in counters.items()
                         if k.split(":")[0] in ("refused", "handshake_failed", "bans", "policed",
                                                "feedback_sent", "feedback_acked",
                                                "session_refused", "connection_rate_limited")},
    }


def main() -> None:
    quiet_logs()
    quick = "--quick" in sys.argv
    t0 = time.time()
    fig = trio.run(hub_main, quick)
    print("attack benchmark (loopback TCP, default PolicingConfig)")
    print(f"  honest goodput      {fig['honest_msgs_per_s_base']} msg/s alone, "
          f"{fig['honest_msgs_per_s_attack']} under attack -> ratio {fig['honest_goodput_ratio']}"
          " (goal >= 0.9)")
    print(f"  flooder             sent {fig['flooder']['sent']} at {FLOOD_RATE:.0f}/s, "
          f"{fig['flood_delivered']} delivered, cut off after {fig['cutoff_s']} s (goal < 5); "
          f"sessions ended: {', '.join(fig['flooder']['close_reasons'])}")
    sa, sl = fig["stranger_attack"], fig["stranger_alone"]
    print(f"  stranger            {sa['attempts']} connections during the attack, "
          f"{sl['attempts']} alone ({fig['hub_refused_alone']} refused by the hub)")
    print(f"  rejection cost      hub {fig['hub_cpu_per_attempt_us']} us vs attacker "
          f"{fig['attacker_cpu_per_attempt_us']} us per attempt -> ratio {fig['rejection_cost_ratio']}")
    print(f"  memory              {fig['bytes_per_stalled_handshake']} B per stalled handshake; "
          f"hub peak RSS {fig['peak_rss_bytes'] / 2**20:.1f} MiB")
    print(f"  wall time           {time.time() - t0:.1f} s")
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
