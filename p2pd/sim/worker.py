"""A worker process of the loopback TCP mode: ``python -m p2pd.sim.worker PORT INDEX TOKEN``.

Started by :func:`p2pd.sim.workers.simulate_workers`, which describes the
exchange; this module is the worker's side of it (:func:`serve_worker`).
"""

from __future__ import annotations

import pickle
import resource
import signal
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from p2pd.errors import P2pdError
from p2pd.sim.attacks import run_attacks
from p2pd.sim.community import (
    COMMUNITY,
    PSEUDONYM_QUOTA,
    SimCommunity,
    SimConfig,
    households,
    topology,
)
from p2pd.sim.logs import captured_logs
from p2pd.sim.pace import LagProbe, take_outcomes, trio_time_of_wall
from p2pd.sim.results import (
    agent_totals,
    fast_switching,
    live_trades,
    peak_rss_bytes,
    rare_collections,
)
from p2pd.sim.workers import STATUS_S, Channel
from protocol import PseudonymIssuer, SigningKey, TrustPolicy


async def serve_worker(port: int, index: int, token: str) -> None:
    """Connect to the coordinator on ``port`` and run this worker's members until told to exit."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    chan = Channel(stream)
    await chan.send({"type": "hello", "worker": index, "token": token})
    init = await chan.receive()
    with captured_logs() as tally:
        try:
            await _work(chan, init, tally.counts)
        except P2pdError as exc:  # a refusal the coordinator can show in one line
            await chan.send({"type": "error", "error": f"{type(exc).__name__}: {exc}"})
            raise


async def _work(chan: Channel, init: dict[str, Any], log_counts: Any) -> None:
    cfg: SimConfig = init["cfg"]
    members = set(init["members"])
    cpu0 = time.process_time()
    store_dir = init["store_dir"] if cfg.store == "sqlite" else None
    com: SimCommunity | None = None
    try:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            com = SimCommunity(cfg, nursery, stack, store_dir)
            com.issuer = SigningKey.from_seed(init["issuer"])
            com.policy = TrustPolicy(COMMUNITY, frozenset({com.issuer.public}))
            com.pseudonyms = PseudonymIssuer(com.issuer, COMMUNITY, quota=PSEUDONYM_QUOTA,
                                             keys=pickle.loads(init["epoch_keys"]))
            margin = cfg.agent.lead_slots + 2
            for h in households(cfg, com.rules.slot_len, margin, only=members):
                await com.add_node(com.identity(h.member_id), h)
            await chan.send({"type": "ready", "addresses": {s.member_id: s.address for s in com.nodes},
                             "ids": {s.household.index: s.member_id for s in com.nodes if s.household}})
            peers = await chan.receive()
            com.remote = {m: tuple(a) for m, a in peers["addresses"].items() if m not in com.by_id}
            await _dial_topology(com, peers["ids"])
            if cfg.scenario != "S1":
                from p2pd.sim.scenarios import setup_scenario

                await setup_scenario(com)
            await chan.send({"type": "connected"})
            start = await chan.receive()
            com.start_agents()
            com.market_clock.origin = trio_time_of_wall(start["at_wall"], time.time())
            result = await _trade(com, chan, attacks=init["attacks"])
            result.update(cpu_s=time.process_time() - cpu0, peak_rss=peak_rss_bytes(),
                          log_counts=dict(log_counts))
            await chan.send(result)
            with trio.move_on_after(60):
                await chan.receive()  # exit
    finally:
        for repo in com.repos if com is not None else ():
            repo.close()


async def _dial_topology(com: SimCommunity, ids: list[str]) -> None:
    """Dial this worker's part of the seeded topology: the pairs whose dialer it holds."""
    local = {s.household.index: s for s in com.nodes if s.household is not None}
    limiter = trio.CapacityLimiter(8)

    async def one(i: int, j: int) -> None:
        async with limiter:
            for _ in range(3):
                try:
                    await com.connect(local[i], ids[j])
                    return
                except (P2pdError, OSError):
                    await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for i, j in topology(com.cfg.seed, com.cfg.nodes, com.cfg.degree, com.cfg.markets):
            if i in local:
                nursery.start_soon(one, i, j)


async def _trade(com: SimCommunity, chan: Channel, *, attacks: bool) -> dict[str, Any]:
    probe = LagProbe()
    outcomes: dict[str, dict[str, Any]] = {}
    finished = trio.Event()
    attacks_done = trio.Event()

    async def commands() -> None:
        while not finished.is_set():
            msg = await chan.receive()
            if msg["type"] == "rescale":
                com.market_clock.rescale(msg["scale"], at=trio_time_of_wall(msg["at_wall"], time.time()))
            elif msg["type"] in ("finish", "exit"):  # exit: the coordinator gave up
                finished.set()
                if msg["type"] == "exit":
                    raise SystemExit(1)

    async def attack() -> None:
        if attacks:
            await trio.sleep_until(com.market_clock.origin)
            await run_attacks(com, com.cfg.attacks, outcomes)
        attacks_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        nursery.start_soon(commands)
        nursery.start_soon(attack)
        while not finished.is_set():
            with trio.move_on_after(STATUS_S):
                await finished.wait()
            takes, timeouts = take_outcomes(agent_totals(com.nodes))
            trades, wh = live_trades(com.nodes)
            await chan.send({"type": "status", "lags": probe.take(), "takes": takes, "timeouts": timeouts,
                             "trades": trades, "wh": wh, "slot_len": com.rules.slot_len})
        await attacks_done.wait()
        nursery.cancel_scope.cancel()
    receipts = com.receipts()
    roles: dict[str, Any] = {}
    if com.cfg.scenario != "S1":
        from p2pd.sim.scenarios import member_receipts, roles_report

        receipts = member_receipts(com, receipts)
        roles = roles_report(com)
    return {"type": "result", "receipts": receipts, "traffic": com.traffic_totals(),
            "agents": dict(agent_totals(com.nodes)), "attacks": outcomes, "roles": roles}


def main(argv: list[str]) -> int:
    port, index, token = int(argv[0]), int(argv[1]), argv[2]
    # Ctrl-C in a terminal reaches the whole process group: the coordinator
    # decides (it asks every worker to finish, then reports), not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # each node holds a listener and its sessions: many sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with fast_switching(), rare_collections():
        trio.run(serve_worker, port, index, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
