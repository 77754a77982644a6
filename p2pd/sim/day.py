"""Run a community, or some of its neighbourhood markets, over the configured window.

:func:`run_community` is the day itself: build the community, let it trade
until ``cfg.end`` (pacing a wall-clock run, stopping at an interruption),
and collect what it produced (:class:`Outcome`), before any accounts are
settled. :mod:`p2pd.sim.run` settles one process's day into the report;
:mod:`p2pd.sim.markets` runs markets in worker processes and settles theirs
together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import trio

from p2pd.clock import trio_deadline
from p2pd.sim.attacks import run_attacks
from p2pd.sim.build import open_community
from p2pd.sim.community import Household, SimConfig
from p2pd.sim.pace import LagProbe, Pacer, take_outcomes
from p2pd.sim.results import (
    DEFAULT_MIN_TIME_SCALE,
    Interruption,
    Look,
    Progress,
    agent_totals,
    live_trades,
)
from store import ReceiptRecord


@dataclass
class Outcome:
    """What a run of a community (or of some of its markets) produced, before the accounts.

    Plain data, so a worker process can send it (p2pd/sim/markets.py)."""

    reached: int
    receipts: list[ReceiptRecord]
    roles: dict[str, Any]
    traffic: dict[str, int]
    agents: dict[str, int]
    attacks: dict[str, dict[str, Any]]
    setup_s: float
    run_s: float
    slot_len: int
    pace: dict[str, Any] | None


async def run_community(cfg: SimConfig, *, members: Collection[int] | None = None,
                        progress: Progress | None = None, attacks: bool = True,
                        min_time_scale: float = DEFAULT_MIN_TIME_SCALE,
                        interruption: Interruption | None = None) -> tuple[Outcome, list[Household]]:
    """Run the community (only the households ``members``, if given) until ``cfg.end``
    or an interruption; what it produced, and its households."""
    t0 = time.perf_counter()
    async with open_community(config=cfg, members=members) as com:
        setup_s = time.perf_counter() - t0
        outcomes: dict[str, dict[str, Any]] = {}
        clock = com.market_clock
        pacer = None if cfg.virtual else Pacer(cfg.time_scale, min_time_scale)
        probe = LagProbe()
        seen = (0, 0)
        async with trio.open_nursery() as nursery:
            watching = trio.CancelScope()
            if interruption is not None:
                await nursery.start(_watch, interruption, nursery.cancel_scope.cancel, watching)
            if attacks:
                nursery.start_soon(run_attacks, com, cfg.attacks, outcomes)
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
        out = Outcome(reached, receipts, roles, com.traffic_totals(), dict(agent_totals(com.nodes)), outcomes,
                      setup_s, run_s, com.rules.slot_len, None if pacer is None else pacer.report())
        homes = [s.household for s in com.nodes if s.household is not None]
    return out, homes


async def _watch(interruption: Interruption, stop: Callable[[], None], scope: trio.CancelScope, *,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await interruption.watch(stop, task_status=task_status)


async def _probe(probe: LagProbe, scope: trio.CancelScope) -> None:
    with scope:
        await probe.run()


def seed_trio_scheduler(seed: int) -> None:
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
