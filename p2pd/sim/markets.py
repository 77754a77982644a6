"""Neighbourhood markets on every core, in virtual time.

Markets split by ``--market-size`` share no session (p2pd/sim/community.py,
:func:`~p2pd.sim.community.topology`), so nothing one market does can reach
another: they can run in separate processes, each in its own virtual time,
and the day is the same as in one process. :func:`simulate_markets` (in the
``p2pd sim`` process) gives market *m* to worker *m* mod K, starts the
workers (``multiprocessing``, spawned: a fresh interpreter each), and
settles the accounts from their receipts, as the loopback TCP mode does
(p2pd/sim/workers.py) but without a clock to share.

Each worker sends, over its pipe (pickled; only between this process and
the children it started):

* ``("look", fraction, sim_time, trades, wh)`` every five simulated minutes:
  the progress line shows the slowest worker, with every worker's trades;
* ``("result", outcome, cpu_s, peak_rss, log_counts)`` at the end, or
  ``("error", text)`` for a refusal to show in one line.

Ctrl-C reaches every process of the terminal's group and SIGTERM only this
one: the coordinator passes either on to the workers as SIGTERM, each stops
where it is and sends its result, and the report covers the slots every
worker finished. Attacks run in worker 0, against its own markets.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Collection
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from p2pd.errors import P2pdError
from p2pd.sim.community import SimConfig, SimError, households
from p2pd.sim.results import Interruption, Look, Progress, build_report, peak_rss_bytes, summed

RESULT_S = 60.0
"""How long the coordinator waits for the workers' results after passing a signal on."""


def market_parts(cfg: SimConfig, workers: int) -> list[list[int]]:
    """The member indexes of each worker: whole markets, market *m* to worker *m* mod K."""
    k = max(1, min(workers, cfg.markets))
    parts: list[list[int]] = [[] for _ in range(k)]
    for i in range(cfg.nodes):
        parts[cfg.market_of(i) % k].append(i)
    return parts


def simulate_markets(cfg: SimConfig, *, workers: int, progress: Progress | None = None, plot: bool = False,
                     detail: bool = False, log_counts: Callable[[], dict[str, int]] | None = None,
                     interruption: Interruption | None = None, log_path: str | None = None) -> dict[str, Any]:
    """Run ``cfg``'s markets over ``workers`` processes in virtual time; the report.

    Raises :class:`SimError` if a worker refuses the run or dies.
    """
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    parts = market_parts(cfg, workers)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    pipes: dict[Connection, int] = {}
    looks: dict[int, tuple[float, float, int, int]] = {}
    results: dict[int, tuple[Any, float, int, dict[str, int]]] = {}
    passed_on = False

    def stop_workers() -> None:
        for w, p in enumerate(procs):
            if w not in results and p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        nonlocal passed_on
        if interruption is not None and interruption.signal is None:
            interruption.signal = signal.Signals(signum).name
        passed_on = True
        stop_workers()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if interruption else {}
    try:
        for w, members in enumerate(parts):
            here, there = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(cfg, members, w == 0, log_path, there),
                            name=f"p2pd-sim-market-worker-{w}", daemon=True)
            p.start()
            there.close()
            procs.append(p)
            pipes[here] = w
        for s in previous:
            signal.signal(s, pass_on)
        deadline: float | None = None
        while len(results) < len(parts):
            if passed_on:
                # Again at each look: a worker still setting up ignores it until its run watches.
                stop_workers()
                deadline = deadline or time.monotonic() + RESULT_S
            if deadline is not None and time.monotonic() > deadline:
                raise SimError(f"the market workers gave no result within {RESULT_S:g} s of the signal")
            for conn in wait(list(pipes), timeout=0.5):
                assert isinstance(conn, Connection)
                w = pipes[conn]
                try:
                    msg = conn.recv()
                except EOFError:
                    procs[w].join(timeout=5)
                    raise SimError(f"market worker {w} ended without a result ({_ended(procs[w].exitcode)})") from None
                if msg[0] == "look":
                    looks[w] = msg[1:]
                    if progress is not None and len(looks) == len(parts):
                        slowest = min(looks.values())
                        progress(Look(slowest[0], slowest[1], sum(v[2] for v in looks.values()),
                                      sum(v[3] for v in looks.values())))
                elif msg[0] == "result":
                    results[w] = msg[1:]
                    del pipes[conn]
                else:
                    raise SimError(f"market worker {w}: {msg[1]}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for w, p in enumerate(procs):
            if w not in results:  # the run failed: the other workers' days are lost anyway
                p.kill()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    outcomes = [results[w][0] for w in range(len(parts))]
    receipts = [rec for out in outcomes for rec in out.receipts]
    traffic = summed(*(out.traffic for out in outcomes))
    agents = summed(*(out.agents for out in outcomes))
    logs = summed(log_counts() if log_counts else {}, *(results[w][3] for w in range(len(parts))))
    attacks: dict[str, dict[str, Any]] = {}
    for out in outcomes:
        attacks.update(out.attacks)
    slot_len = outcomes[0].slot_len
    report = build_report(
        cfg, households(cfg, slot_len, 0), receipts, slot_len=slot_len, reached=min(o.reached for o in outcomes),
        roles={}, traffic=traffic, agents=agents, attacks=attacks, setup_s=max(o.setup_s for o in outcomes),
        run_s=max(o.run_s for o in outcomes), wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - cpu0 + sum(r[1] for r in results.values()),
        peak_rss=max([peak_rss_bytes(), *(r[2] for r in results.values())]), workers=len(parts), pace=None,
        log_counts=logs, plot=plot, detail=detail,
        stopped=interruption.reason if interruption is not None else None)
    report["worker_cpu_s"] = [round(results[w][1], 3) for w in range(len(parts))]
    return report


def _ended(code: int | None) -> str:
    """How a process ended, as a person reads it."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _worker(cfg: SimConfig, members: Collection[int], attacks: bool, log_path: str | None,
            pipe: Connection) -> None:
    """A worker process: run ``members`` (whole markets) in virtual time and send the outcome."""
    import functools

    import trio
    import trio.testing

    from p2pd.sim.day import run_community, seed_trio_scheduler
    from p2pd.sim.logs import captured_logs
    from p2pd.sim.results import rare_collections

    # The terminal's Ctrl-C reaches this process too, and the coordinator
    # passes it on as SIGTERM (more than once): the run watches for both, and
    # outside that watch both are ignored, so none kills a worker that has
    # stopped and is sending its result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cpu0 = time.process_time()
    interruption = Interruption()

    def look(at: Look) -> None:
        pipe.send(("look", at.fraction, at.sim_time, at.trades, at.wh))

    try:
        with captured_logs(log_path) as tally, rare_collections():
            seed_trio_scheduler(cfg.seed)
            main = functools.partial(run_community, cfg, members=members, progress=look, attacks=attacks,
                                     interruption=interruption)
            out, _homes = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
            pipe.send(("result", out, time.process_time() - cpu0, peak_rss_bytes(), dict(tally.counts)))
    except P2pdError as exc:  # a refusal the coordinator shows in one line
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    except BaseException:
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc(limit=-3).strip().splitlines()[-1]))
        raise
    finally:
        pipe.close()
