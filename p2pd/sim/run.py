"""Run one simulation from a :class:`~p2pd.sim.community.SimConfig` and build its report."""

from __future__ import annotations

import functools
import random
import resource
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import trio
import trio.testing

from p2pd.clock import trio_deadline
from p2pd.sim.attacks import run_attacks
from p2pd.sim.build import open_community
from p2pd.sim.community import Household, SimCommunity, SimConfig
from p2pd.sim.report import settle_window, summary

Progress = Callable[[float, SimCommunity], None]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def live_trades(com: SimCommunity) -> tuple[int, int]:
    """(trades, Wh) committed by order owners so far, from node counters and receipts."""
    trades = sum(s.node.counters["trades_sold"] + s.node.counters["trades_bought"] for s in com.nodes)
    wh = sum(s.agent.counters["taken_wh"] for s in com.nodes if s.agent is not None)
    return trades, wh


def text_progress(stream: Any = sys.stderr, width: int = 30) -> Progress:
    """A plain-text progress line printed at most 20 times a run."""
    shown = -1

    def show(fraction: float, com: SimCommunity) -> None:
        nonlocal shown
        step = int(fraction * 20)
        if step == shown:
            return
        shown = step
        trades, wh = live_trades(com)
        t = datetime.fromtimestamp(com.market_clock.now(), timezone.utc).strftime("%H:%M")
        bar = "#" * int(fraction * width)
        print(f"[{bar:<{width}}] {100 * fraction:3.0f}% sim {t} UTC, {trades} trades, "
              f"{wh / 1000:.1f} kWh", file=stream, flush=True)

    return show


def _energy_by_slot(homes: list[Household], cfg: SimConfig, slot_len: int) -> dict[str, dict[int, int]]:
    prod: dict[int, int] = {}
    cons: dict[int, int] = {}
    for s in range(cfg.start, cfg.end, slot_len):
        pv = sum(h.production_wh(s, s + slot_len) for h in homes)
        grid = 0
        for h in homes:
            a, b = h.reading_at(s), h.reading_at(s + slot_len)
            grid += (b.import_wh - a.import_wh) - (b.export_wh - a.export_wh)
        prod[s], cons[s] = pv, pv + grid
    return {"production_by_slot": prod, "consumption_by_slot": cons}


async def simulate(cfg: SimConfig, *, progress: Progress | None = None,
                   plot: bool = False) -> dict[str, Any]:
    """Run the community for ``cfg.hours`` simulated hours, attacks included; return the report."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    async with open_community(config=cfg) as com:
        setup_s = time.perf_counter() - t0
        attacks: dict[str, dict[str, Any]] = {}
        clock = com.market_clock
        # Look at the community every quarter second of wall time, or every
        # five simulated minutes in virtual time (each look costs a wake-up).
        step = 300.0 if cfg.virtual else 0.25 * cfg.time_scale
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_attacks, com, cfg.attacks, attacks)
            while clock.now() < cfg.end:
                if progress is not None:
                    progress((clock.now() - cfg.start) / (cfg.end - cfg.start), com)
                await trio.sleep_until(trio_deadline(clock, min(cfg.end, clock.now() + step)))
            if progress is not None:
                progress(1.0, com)
        run_s = time.perf_counter() - t0 - setup_s
        receipts = com.receipts()
        roles: dict[str, Any] = {}
        if cfg.scenario != "S1":
            from p2pd.sim.scenarios import member_receipts, roles_report

            receipts = member_receipts(com, receipts)
            roles = roles_report(com)
        traffic = com.traffic_totals()
        agent_counters: dict[str, int] = {}
        for sim in com.nodes:
            if sim.agent is not None:
                for k, v in sim.agent.counters.items():
                    agent_counters[k] = agent_counters.get(k, 0) + v
        households = [s.household for s in com.nodes if s.household is not None]
        slot_len = com.rules.slot_len
    accounts = settle_window(households, receipts, cfg.start, cfg.end, slot_len)
    wall_s = time.perf_counter() - t0
    report: dict[str, Any] = {
        "scenario": cfg.scenario, "nodes": cfg.nodes, "hours": cfg.hours, "seed": cfg.seed,
        "start_utc": datetime.fromtimestamp(cfg.start, timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "transport": "memory" if cfg.memory else "tcp-loopback", "store": cfg.store,
        "time": "virtual" if cfg.virtual else "wall-clock",
        "time_scale": None if cfg.virtual else cfg.time_scale,
        **summary(accounts),
        "messages": traffic.get("messages", 0),
        "messages_per_s": traffic.get("messages", 0) / max(run_s, 1e-9),
        "bytes": traffic.get("bytes", 0),
        "handshakes": traffic.get("handshakes", 0),
        "handshakes_per_s": traffic.get("handshakes", 0) / max(wall_s, 1e-9),
        "handshake_failures": traffic.get("handshake_failures", 0),
        "congestion": {"feedback_sent": traffic.get("feedback_sent", 0),
                       "policed": traffic.get("policed", 0), "bans": traffic.get("bans", 0)},
        "agents": agent_counters,
        "roles": roles,
        "attacks": attacks,
        "setup_s": round(setup_s, 3),
        "run_s": round(run_s, 3),
        "wall_s": round(wall_s, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "plot_data": {"prices": accounts.prices, "traded_by_slot": accounts.traded_by_slot,
                      **(_energy_by_slot(households, cfg, slot_len) if plot else {})},
    }
    return report


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


def run_sim(cfg: SimConfig, *, progress: Progress | None = None, plot: bool = False) -> dict[str, Any]:
    """:func:`simulate` in a fresh ``trio.run``; the report.

    Virtual time runs under ``MockClock(autojump_threshold=0)``: trio's clock
    jumps to the next deadline as soon as every task waits, so a simulated
    day costs exactly the CPU work it needs. Wall-clock runs (loopback TCP,
    SQLite: real I/O) run on trio's real clock, and the stores' worker threads
    share the GIL with hundreds of tasks, so a shorter switch interval cuts the
    latency of each store call.
    """
    main = functools.partial(simulate, cfg, progress=progress, plot=plot)
    if cfg.virtual:
        _seed_trio_scheduler(cfg.seed)
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        return trio.run(main)
    finally:
        sys.setswitchinterval(previous)
