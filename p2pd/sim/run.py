"""Run one simulation from a :class:`~p2pd.sim.community.SimConfig` and build its report.

:func:`simulate` runs the community in this process (:func:`p2pd.sim.day.run_community`):
in virtual time, or on a scaled wall clock with in-memory streams. The
loopback TCP mode runs its nodes in worker processes
(:func:`p2pd.sim.workers.simulate_workers`), and neighbourhood markets in
virtual time may run in worker processes too (:mod:`p2pd.sim.markets`);
:func:`run_sim` picks. Wall-clock runs are paced (p2pd/sim/pace.py): they
slow down when the nodes fall behind, or stop and say so.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from p2pd.sim.community import SimConfig
from p2pd.sim.day import run_community, seed_trio_scheduler
from p2pd.sim.markets import simulate_markets
from p2pd.sim.results import (
    DEFAULT_MIN_TIME_SCALE,
    Interruption,
    Progress,
    build_report,
    fast_switching,
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
    out, homes = await run_community(cfg, progress=progress, min_time_scale=min_time_scale,
                                     interruption=interruption)
    return build_report(
        cfg, homes, out.receipts, slot_len=out.slot_len, reached=out.reached, roles=out.roles,
        traffic=out.traffic, agents=out.agents, attacks=out.attacks, setup_s=out.setup_s, run_s=out.run_s,
        wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - cpu0, peak_rss=peak_rss_bytes(),
        workers=None, pace=out.pace, log_counts=log_counts() if log_counts else {}, plot=plot,
        detail=detail, stopped=interruption.reason if interruption is not None else None)


def run_sim(cfg: SimConfig, *, progress: Progress | None = None, plot: bool = False,
            workers: int = 1, min_time_scale: float = DEFAULT_MIN_TIME_SCALE, detail: bool = False,
            log_counts: Callable[[], dict[str, int]] | None = None,
            interruption: Interruption | None = None, log_path: str | None = None) -> dict[str, Any]:
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
    report covers the slots it finished. Neighbourhood markets
    (``cfg.market_size``) in virtual time run on up to ``workers`` processes
    (:mod:`p2pd.sim.markets`; their nodes' log lines go to ``log_path``).
    """
    if cfg.virtual and cfg.markets > 1 and workers > 1:
        return simulate_markets(cfg, workers=workers, progress=progress, plot=plot, detail=detail,
                                log_counts=log_counts, interruption=interruption, log_path=log_path)
    if not cfg.memory:
        return trio.run(functools.partial(simulate_workers, cfg, workers=workers, progress=progress, plot=plot,
                                          min_time_scale=min_time_scale, detail=detail, log_counts=log_counts,
                                          interruption=interruption))
    main = functools.partial(simulate, cfg, progress=progress, plot=plot, min_time_scale=min_time_scale,
                             detail=detail, log_counts=log_counts, interruption=interruption)
    with rare_collections():
        if cfg.virtual:
            seed_trio_scheduler(cfg.seed)
            return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        with fast_switching():
            return trio.run(main)
