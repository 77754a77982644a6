"""Run one simulation from a :class:`~p2pd.sim.community.SimConfig` and build its report.

:func:`simulate` runs the community in this process: in virtual time, or on a
scaled wall clock with in-memory streams. The loopback TCP mode runs its
nodes in worker processes (:func:`p2pd.sim.workers.simulate_workers`);
:func:`run_sim` picks. Wall-clock runs are paced (p2pd/sim/pace.py): they
slow down when the nodes fall behind, or stop and say so.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from p2pd.clock import trio_deadline
from p2pd.sim.attacks import run_attacks
from p2pd.sim.build import open_community
from p2pd.sim.community import SimConfig
from p2pd.sim.pace import LagProbe, Pacer, take_outcomes
from p2pd.sim.results import (
    DEFAULT_MIN_TIME_SCALE,
    Interruption,
    Look,
    Progress,
    agent_totals,
    build_report,
    fast_switching,
    live_trades,
    peak_rss_bytes,
    rare_collections,
)
from p2pd.sim.results import text_progress as text_progress
from p2pd.sim.workers import simulate_workers


async def simulate(cfg: SimConfig, *, progress: Progress | None = None, plot: bool = False,
                   min_time_scale: float = DEFAULT_MIN_TIME_SCALE, detail: bool = False,
                   log_counts: Callable[[], dict[str, int]] | None = None,
                   interruption: Interruption | None = None) -> dict[str, Any]:
    """Run the community in this process for ``cfg.hours``, attacks included; return the report.

    A wall-clock run is paced (see p2pd/sim/pace.py); if it stops, the report
    covers the slots it finished and says why in ``stopped``. So does a run
    that ``interruption`` (Ctrl-C, SIGTERM) stops.
    """
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    async with open_community(config=cfg) as com:
        setup_s = time.perf_counter() - t0
        attacks: dict[str, dict[str, Any]] = {}
        clock = com.market_clock
        pacer = None if cfg.virtual else Pacer(cfg.time_scale, min_time_scale)
        probe = LagProbe()
        seen = (0, 0)
        async with trio.open_nursery() as nursery:
            watching = trio.CancelScope()
            if interruption is not None:
                await nursery.start(_watch, interruption, nursery.cancel_scope.cancel, watching)
            nursery.start_soon(run_attacks, com, cfg.attacks, attacks)
            probing = trio.CancelScope()
            if pacer is not None:
                nursery.start_soon(_probe, probe, probing)
            while clock.now() < cfg.end:
                if progress is not None:
                    progress(Look((clock.now() - cfg.run_start) / (cfg.end - cfg.run_start), clock.now(),
                                  *live_trades(com.nodes), None if pacer is None else clock.scale, com))
                # Every five simulated minutes in virtual time (each look costs
                # a wake-up), every quarter second of wall time otherwise.
                step = 300.0 if pacer is None else 0.25 * clock.scale
                await trio.sleep_until(trio_deadline(clock, min(cfg.end, clock.now() + step)))
                if pacer is None:
                    continue
                ended = take_outcomes(agent_totals(com.nodes))
                decision = pacer.look(time.monotonic(), probe.take(), ended[0] - seen[0],
                                      ended[1] - seen[1], clock.now())
                seen = ended
                if decision is not None and decision.rescale is not None:
                    clock.rescale(decision.rescale)
                if decision is not None and decision.stop is not None:
                    nursery.cancel_scope.cancel()
                    break
            probing.cancel()
            watching.cancel()
        reached = min(cfg.end, int(clock.now()))
        if progress is not None:
            progress(Look((reached - cfg.run_start) / (cfg.end - cfg.run_start), reached, *live_trades(com.nodes),
                          None if pacer is None else clock.scale, com))
        run_s = time.perf_counter() - t0 - setup_s
        receipts = com.receipts()
        roles: dict[str, Any] = {}
        if cfg.scenario != "S1":
            from p2pd.sim.scenarios import member_receipts, roles_report

            receipts = member_receipts(com, receipts)
            roles = roles_report(com)
        traffic = com.traffic_totals()
        agents = dict(agent_totals(com.nodes))
        homes = [s.household for s in com.nodes if s.household is not None]
        slot_len = com.rules.slot_len
    return build_report(
        cfg, homes, receipts, slot_len=slot_len, reached=reached, roles=roles, traffic=traffic,
        agents=agents, attacks=attacks, setup_s=setup_s, run_s=run_s, wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - cpu0, peak_rss=peak_rss_bytes(), workers=None,
        pace=None if pacer is None else pacer.report(), log_counts=log_counts() if log_counts else {},
        plot=plot, detail=detail, stopped=interruption.reason if interruption is not None else None)


async def _watch(interruption: Interruption, stop: Callable[[], None], scope: trio.CancelScope, *,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await interruption.watch(stop, task_status=task_status)


async def _probe(probe: LagProbe, scope: trio.CancelScope) -> None:
    with scope:
        await probe.run()


def _seed_trio_scheduler(seed: int) -> None:
    """Make trio's run-queue shuffle repeat for ``seed``, so a virtual-time run repeats.

    trio reverses each batch of runnable tasks at random (to shake out
    order-dependent bugs), from a module-level ``random.Random`` that it seeds
    only under Hypothesis. Which of two tasks ready at the same virtual
    instant runs first can decide who takes an order first, so without this
    the same seed could give another day. Private to trio: if it ever goes,
    runs still work, only no longer repeat exactly.
    """
    rng = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(rng, "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(f"trio-scheduler/{seed}")


def run_sim(cfg: SimConfig, *, progress: Progress | None = None, plot: bool = False,
            workers: int = 1, min_time_scale: float = DEFAULT_MIN_TIME_SCALE, detail: bool = False,
            log_counts: Callable[[], dict[str, int]] | None = None,
            interruption: Interruption | None = None) -> dict[str, Any]:
    """Run one simulation in a fresh ``trio.run``; the report.

    Virtual time runs under ``MockClock(autojump_threshold=0)``: trio's clock
    jumps to the next deadline as soon as every task waits, so a simulated
    day costs exactly the CPU work it needs. The loopback TCP mode spreads
    the nodes over ``workers`` processes (:mod:`p2pd.sim.workers`).
    Wall-clock runs in this process (``--memory --wall-clock``, memory
    streams with SQLite) run on trio's real clock, and the stores' worker
    threads share the GIL with hundreds of tasks, so a shorter switch
    interval cuts the latency of each store call. With ``interruption``
    (the ``p2pd sim`` command), Ctrl-C or SIGTERM ends the run early and the
    report covers the slots it finished.
    """
    if not cfg.memory:
        return trio.run(functools.partial(simulate_workers, cfg, workers=workers, progress=progress, plot=plot,
                                          min_time_scale=min_time_scale, detail=detail, log_counts=log_counts,
                                          interruption=interruption))
    main = functools.partial(simulate, cfg, progress=progress, plot=plot, min_time_scale=min_time_scale,
                             detail=detail, log_counts=log_counts, interruption=interruption)
    with rare_collections():
        if cfg.virtual:
            _seed_trio_scheduler(cfg.seed)
            return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        with fast_switching():
            return trio.run(main)
