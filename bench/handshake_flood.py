"""Handshake flood benchmark: can a known member still get a session in?

Three processes, all on loopback TCP (spawned, so each one's CPU is its own):

* ``hub``: a node with the default limits (``NodeLimits()``,
  ``PolicingConfig()``), listening on 127.0.0.1, logging at info level to a
  file, as ``p2pd run`` does;
* ``attacker``: opens connections from 127.0.0.2 ... 127.0.0.50 (round robin,
  non-blocking sockets, one process), sends a valid Noise message 1 on each
  and never finishes the handshake; it keeps up to ``--hold`` of them open;
* ``member``: a known member (it had a session from its address before the
  flood) that opens a new session every ``--interval`` seconds, timing each
  from ``connect`` to established, then closes it.

Phases: (1) the member alone: ``--tries`` sessions, the baseline; (2) the
flood at ``--rate`` connections/s, the member trying all along; (3) the flood
alone as fast as the attacker can go, to price a refused connection on both
sides.

Figures: ``success_rate`` (sessions within 2 s under flood; goal >= 0.95),
time to session p50/p95 under flood and its ratio to the baseline p50 measured
in phase 1 (a try counts only once the hub has the session too: an initiator
believes it is established when it sends message 3, which the hub may drop); ``cpu_ratio`` (the hub's CPU per attacker connection over the
attacker's CPU per connection, both read from /proc/PID/stat in phase 3; goal
<= 1), and the hub's CPU per connection over a bare Python ``accept()`` +
``close()`` loop measured in this run (the cheapest a refusal can be); the
hub's log lines and bytes. Prints a summary, then one JSON object as the last
line.

Run: ``python bench/handshake_flood.py [--quick]`` (about 45 s; --quick 25 s).
``--hosts N --rate R`` floods from N addresses (127.0.0.2 and up) at R/s: with
more addresses than the per-host limit can hold back, the strangers' budget
(docs/protocol.md §13.7, "Under load") is what keeps the hub responsive.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import selectors
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pd import log  # noqa: E402
from p2pd.errors import PeerGone  # noqa: E402
from p2pd.net.identity import NodeIdentity, NodeKeys  # noqa: E402
from p2pd.net.listener import dial, serve_p2p  # noqa: E402
from p2pd.net.node import Node  # noqa: E402
from p2pd.net.policing import attach_policer  # noqa: E402
from protocol import Credential, NoiseHandshake, SigningKey, TrustPolicy, frame  # noqa: E402

COMMUNITY = "floodbench"


def attack_hosts(n: int) -> list[str]:
    """``n`` attacker addresses: 127.0.0.2 ... 127.0.0.50 for the default 49."""
    return [f"127.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}" for a in range(2, n + 2)]


CLK_TCK = os.sysconf("SC_CLK_TCK")
IdentityBlob = tuple[bytes, bytes, bytes]


def make_identity(issuer: SigningKey, member_id: str, now: float) -> IdentityBlob:
    signing = SigningKey.generate()
    noise = X25519PrivateKey.generate()
    cred = Credential.issue(
        issuer, community=COMMUNITY, member_id=member_id, role="prosumer",
        metering_point="EAN000000000000001", sign_pk=signing.public,
        noise_pk=noise.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        valid_from=int(now) - 3600, valid_until=int(now) + 86400,
    )
    return (signing.seed(), noise.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            cred.encode())


def load_identity(blob: IdentityBlob) -> NodeIdentity:
    seed, noise, cred = blob
    return NodeIdentity(NodeKeys(SigningKey.from_seed(seed), noise), Credential.decode(cred))


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the hub --------------------------------------------------------------------


def run_hub(blob: IdentityBlob, issuer_pk: bytes, log_path: str, conn: Any) -> None:
    log.setup("info")
    import logging

    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("level=%(levelname)s %(message)s"))
    logging.getLogger("p2pd").handlers[:] = [handler]
    policy = TrustPolicy(COMMUNITY, frozenset({issuer_pk}))

    async def main() -> None:
        opened: list[float] = []  # when the member's sessions opened here (wall clock)
        async with trio.open_nursery() as nursery:
            hub = Node(load_identity(blob), policy, nursery)
            attach_policer(hub)

            async def watch() -> None:
                async with hub.events.subscribe() as events:
                    async for event in events:
                        if event.NAME == "session_open" and getattr(event, "member", "") == "alice":
                            opened.append(time.time())

            nursery.start_soon(watch)
            listeners = await nursery.start(serve_p2p, hub, "127.0.0.1", 0)
            conn.send(listeners[0].socket.getsockname()[1])
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd == "counters":
                    conn.send(dict(hub.counters))
                elif cmd == "stop":
                    conn.send((dict(hub.counters), opened))
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)


# --- the attacker ---------------------------------------------------------------


def run_attacker(port: int, hosts: list[str], start: float, seconds: float, rate: float,
                 hold: int, out: Any) -> None:
    """Open connections at ``rate``/s (0: as fast as possible), send msg1, never finish."""
    msg1 = frame(NoiseHandshake(initiator=True, static_private=bytes(range(1, 33)),
                                community=COMMUNITY).write_message(b""))
    sel = selectors.DefaultSelector()
    held: deque[socket.socket] = deque()
    pending: set[socket.socket] = set()
    attempts = sent = failed = reset = 0
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    t0 = time.time()
    end = t0 + seconds
    i = 0

    def drop(s: socket.socket) -> None:
        if s in pending:
            pending.discard(s)
            sel.unregister(s)
        s.close()

    while True:
        now = time.time()
        if now >= end or attempts >= 2_000_000:
            break
        due = attempts + 1 if rate <= 0 else int((now - t0) * rate) + 1
        while attempts < due:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            # The attacker's cheapest path: port picked at connect time, and
            # close sends RST (no TIME_WAIT to wait out).
            s.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.bind((hosts[i % len(hosts)], 0))
                i += 1
                s.connect_ex(("127.0.0.1", port))
                try:
                    s.send(msg1)
                    sent += 1
                except (BlockingIOError, OSError):
                    pending.add(s)
                    sel.register(s, selectors.EVENT_WRITE)
                held.append(s)
            except OSError:
                failed += 1
                s.close()
            attempts += 1
            while len(held) > hold:
                drop(held.popleft())
        for key, _ in sel.select(timeout=0 if rate <= 0 else 0.001):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            pending.discard(s)
            sel.unregister(s)
            try:
                s.send(msg1)
                sent += 1
            except OSError:
                reset += 1
    cpu = time.process_time() - cpu0
    for s in held:
        drop(s)
    out.put(("attacker", {"attempts": attempts, "msg1_sent": sent, "failed": failed,
                          "reset": reset, "cpu_s": cpu, "seconds": time.time() - t0}))


# --- the known member -------------------------------------------------------------


def run_member(blob: IdentityBlob, issuer_pk: bytes, port: int, phases: list[tuple[float, int]],
               interval: float, out: Any) -> None:
    import logging

    logging.getLogger("p2pd").setLevel(logging.CRITICAL)
    policy = TrustPolicy(COMMUNITY, frozenset({issuer_pk}))

    async def main() -> None:
        results: list[list[dict[str, Any]]] = []
        async with trio.open_nursery() as nursery:
            node = Node(load_identity(blob), policy, nursery)
            # Become known: one session from our address before anything else.
            conn = await dial(node, "127.0.0.1", port)
            await conn.close()
            await conn.finished.wait()
            for start, tries in phases:
                await trio.sleep(max(0.0, start - time.time()))
                phase: list[dict[str, Any]] = []
                for _ in range(tries):
                    t0 = time.perf_counter()
                    wall = time.time()
                    try:
                        with trio.fail_after(6.0):
                            conn = await dial(node, "127.0.0.1", port, connect_timeout=6.0)
                        took = time.perf_counter() - t0
                        phase.append({"ok": True, "s": took, "at": wall})
                        # Hold it a moment: an initiator counts a session from
                        # message 3, which the hub may still drop (evicted).
                        await trio.sleep(0.05)
                        await conn.close()
                        await conn.finished.wait()
                    except (OSError, PeerGone, trio.TooSlowError) as exc:
                        phase.append({"ok": False, "s": time.perf_counter() - t0, "at": wall,
                                      "error": (str(exc) or type(exc).__name__)[:120]})
                    await trio.sleep(interval)
                results.append(phase)
            nursery.cancel_scope.cancel()
        out.put(("member", results))

    trio.run(main)


# --- ceilings measured in this run -----------------------------------------------------


def bare_accept_close(n: int = 3000) -> float:
    """CPU seconds per connection of the cheapest refusal Python can do: accept, close."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    port = lst.getsockname()[1]
    done = threading.Event()

    def connector() -> None:
        for k in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.bind((f"127.0.0.{k % 49 + 2}", 0))
            s.connect(("127.0.0.1", port))
            s.close()
        done.set()

    # The connector's CPU counts in this process too: time only the accept side.
    accepted = 0
    cpu = 0.0
    th = threading.Thread(target=connector)
    th.start()
    while accepted < n:
        t0 = time.thread_time()
        c, _ = lst.accept()
        c.close()
        cpu += time.thread_time() - t0
        accepted += 1
    th.join()
    lst.close()
    return cpu / n


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def confirm(tries: list[dict[str, Any]], opened: list[float]) -> None:
    """A try counts only if the hub opened the session too, before the next try;
    its time is then from the member's connect to the hub's session_open."""
    for k, t in enumerate(tries):
        end = tries[k + 1]["at"] if k + 1 < len(tries) else float("inf")
        at_hub = [o for o in opened if t["at"] <= o < end]
        if t["ok"] and not at_hub:
            t.update(ok=False, error="established at the member only (the hub dropped it)")
        elif t["ok"]:
            t["s"] = max(t["s"], at_hub[0] - t["at"])


def summarize(tries: list[dict[str, Any]], within: float = 2.0) -> dict[str, Any]:
    ok = [t["s"] for t in tries if t["ok"]]
    good = sum(1 for t in tries if t["ok"] and t["s"] <= within)
    errors: dict[str, int] = {}
    for t in tries:
        if not t["ok"]:
            errors[t["error"]] = errors.get(t["error"], 0) + 1
    return {"tries": len(tries), "established": len(ok), "within_2s": good,
            "success_rate": round(good / len(tries), 3) if tries else None,
            "p50_s": round(pct(ok, 0.5) or 0, 4), "p95_s": round(pct(ok, 0.95) or 0, 4),
            "max_s": round(max(ok), 4) if ok else None, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=500.0, help="attacker connections/s in phase 2")
    parser.add_argument("--hold", type=int, default=3000, help="connections the attacker keeps open")
    parser.add_argument("--hosts", type=int, default=49, help="attacker source addresses")
    parser.add_argument("--interval", type=float, default=0.6, help="member's pause between tries")
    args = parser.parse_args()
    t_flood, t_alone, base_tries = (10.0, 4.0, 10) if args.quick else (20.0, 6.0, 20)
    flood_tries = int(t_flood / (args.interval + 0.05))

    hosts = attack_hosts(args.hosts)
    wall0 = time.time()
    accept_ceiling = bare_accept_close()
    now = time.time()
    issuer = SigningKey.generate()
    hub_blob = make_identity(issuer, "hub", now)
    member_blob = make_identity(issuer, "alice", now)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="p2pd-flood-")
    log_path = os.path.join(tmp, "hub.log")
    parent_end, hub_end = ctx.Pipe()
    hub = ctx.Process(target=run_hub, args=(hub_blob, issuer.public, log_path, hub_end))
    hub.start()
    port = parent_end.recv()

    base_at = time.time() + 3.0  # spawn and import
    flood_at = base_at + base_tries * (args.interval + 0.05) + 2.0
    alone_at = flood_at + t_flood + 2.0
    member = ctx.Process(target=run_member, args=(
        member_blob, issuer.public, port, [(base_at, base_tries), (flood_at + 1.0, flood_tries)],
        args.interval, out))
    flood = ctx.Process(target=run_attacker, args=(port, hosts, flood_at, t_flood, args.rate, args.hold, out))
    alone = ctx.Process(target=run_attacker, args=(port, hosts, alone_at, t_alone, 0.0, args.hold, out))
    for p in (member, flood):
        p.start()

    time.sleep(max(0.0, flood_at - time.time()))
    log0 = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    lines0 = sum(1 for _ in open(log_path)) if os.path.exists(log_path) else 0
    hub_cpu0 = proc_cpu(hub.pid)  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    tag, value = out.get(True, t_flood + 30)
    results[tag] = value
    hub_cpu_flood = proc_cpu(hub.pid) - hub_cpu0  # type: ignore[arg-type]
    log1 = os.path.getsize(log_path)
    lines1 = sum(1 for _ in open(log_path))
    tag, value = out.get(True, 60)
    results[tag] = value
    member.join(10)
    flood.join(10)

    # Phase 3: the flood alone, as fast as one attacker process goes.
    alone.start()
    time.sleep(max(0.0, alone_at - time.time()))
    parent_end.send("counters")
    c0 = parent_end.recv()
    hub_cpu1 = proc_cpu(hub.pid)  # type: ignore[arg-type]
    tag, value = out.get(True, t_alone + 30)
    results["attacker_alone"] = value
    hub_cpu_alone = proc_cpu(hub.pid) - hub_cpu1  # type: ignore[arg-type]
    parent_end.send("counters")
    c1 = parent_end.recv()
    alone.join(10)
    parent_end.send("stop")
    counters, opened = parent_end.recv()
    hub.join(10)

    base, under = results["member"]
    confirm(base, opened)
    confirm(under, opened)
    b, u = summarize(base), summarize(under)
    att, solo = results["attacker"], results["attacker_alone"]
    handled = sum(v - c0.get(k, 0) for k, v in c1.items()
                  if k.startswith(("refused:", "handshake_failed:", "under_load:")))
    hub_per = hub_cpu_alone / max(1, solo["attempts"])
    att_per = solo["cpu_s"] / max(1, solo["attempts"])
    fig = {
        "baseline": b,
        "under_flood": u,
        "success_rate": u["success_rate"],
        "p50_ratio_to_baseline": round(u["p50_s"] / b["p50_s"], 2) if b["p50_s"] and u["p50_s"] else None,
        "flood": {"rate_asked": args.rate, "attempts": att["attempts"],
                  "rate": round(att["attempts"] / att["seconds"], 1),
                  "attacker_cpu_s": round(att["cpu_s"], 3), "hub_cpu_s": round(hub_cpu_flood, 3),
                  "hosts": len(hosts)},
        "alone": {"attempts": solo["attempts"], "rate": round(solo["attempts"] / solo["seconds"], 1),
                  "hub_handled": handled,
                  "hub_cpu_per_conn_us": round(hub_per * 1e6, 2),
                  "attacker_cpu_per_conn_us": round(att_per * 1e6, 2),
                  "bare_accept_close_us": round(accept_ceiling * 1e6, 2)},
        "cpu_ratio": round(hub_per / att_per, 3) if att_per else None,
        "hub_to_bare_accept_ratio": round(hub_per / accept_ceiling, 2) if accept_ceiling else None,
        "hub_log_during_flood": {"lines": lines1 - lines0, "bytes": log1 - log0},
        "hub_counters": {k: v for k, v in sorted(counters.items())
                         if k.split(":")[0] in ("refused", "handshake_failed", "handshakes_evicted",
                                                "sessions_established", "under_load",
                                                "connection_rate_limited", "stranger_budget_refused",
                                                "stranger_retry_admitted")},
    }
    print("handshake flood benchmark (loopback TCP, default limits, 3 processes)")
    print(f"  baseline         {b['established']}/{b['tries']} sessions, p50 {b['p50_s'] * 1e3:.1f} ms, "
          f"p95 {b['p95_s'] * 1e3:.1f} ms")
    print(f"  flood            {fig['flood']['rate']} conn/s from {len(hosts)} addresses "
          f"({att['attempts']} in {att['seconds']:.1f} s)")
    print(f"  under flood      {u['within_2s']}/{u['tries']} sessions within 2 s -> success rate "
          f"{u['success_rate']} (goal >= 0.95); p50 {u['p50_s'] * 1e3:.1f} ms, p95 {u['p95_s'] * 1e3:.1f} ms "
          f"({fig['p50_ratio_to_baseline']}x baseline p50); errors {u['errors']}")
    print(f"  refusal cost     hub {fig['alone']['hub_cpu_per_conn_us']} us vs attacker "
          f"{fig['alone']['attacker_cpu_per_conn_us']} us per connection "
          f"({solo['attempts']} at {fig['alone']['rate']}/s) -> ratio {fig['cpu_ratio']} (goal <= 1); "
          f"bare accept+close {fig['alone']['bare_accept_close_us']} us "
          f"({fig['hub_to_bare_accept_ratio']}x)")
    print(f"  hub log          {fig['hub_log_during_flood']['lines']} lines, "
          f"{fig['hub_log_during_flood']['bytes']} bytes during the flood")
    print(f"  wall time        {time.time() - wall0:.1f} s")
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
