"""What a run reports, and how it shows progress: shared by the in-process run (p2pd/sim/run.py)
and the worker processes of the TCP mode (p2pd/sim/workers.py)."""

from __future__ import annotations

import gc
import resource
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import trio

from p2pd.sim.community import (
    DEFAULT_TIME_SCALE,
    NODES_AT_FULL_SCALE,
    Household,
    SimConfig,
    SimNode,
)
from p2pd.sim.report import fidelity, matchable_wh, settle_window, summary
from store import ReceiptRecord

DEFAULT_MIN_TIME_SCALE = 30.0
"""The slowest a wall-clock run may go before it stops: a day in 48 minutes."""


def default_time_scale(nodes_per_process: int) -> float:
    """The wall-clock mode's starting scale: x2880 up to :data:`NODES_AT_FULL_SCALE` nodes per
    process, slower in proportion above (never under the slowest default). The pacer corrects
    from there; starting too fast loses the first slots' trades before its first look."""
    share = min(1.0, NODES_AT_FULL_SCALE / max(1, nodes_per_process))
    return max(DEFAULT_MIN_TIME_SCALE, float(f"{DEFAULT_TIME_SCALE * share:.3g}"))


@dataclass(frozen=True)
class Look:
    """Where a run is, for the progress line."""

    fraction: float
    sim_time: float
    trades: int
    wh: int
    scale: float | None = None
    """The wall-clock mode's current scale; None in virtual time."""
    community: Any = field(default=None, compare=False, repr=False)
    """The running :class:`p2pd.sim.community.SimCommunity`, for observers
    (the privacy tests watch every node through it); None across workers."""


Progress = Callable[[Look], None]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def agent_totals(nodes: Sequence[SimNode]) -> Counter[str]:
    """The agents' counters, summed."""
    out: Counter[str] = Counter()
    for sim in nodes:
        if sim.agent is not None:
            out.update(sim.agent.counters)
    return out


def summed(*counts: Mapping[str, int]) -> dict[str, int]:
    """Counters (of several worker processes) added key by key."""
    out: Counter[str] = Counter()
    for part in counts:
        out.update(part)
    return dict(out)


def live_trades(nodes: Sequence[SimNode]) -> tuple[int, int]:
    """(trades, Wh) committed by order owners so far, from node counters and agents."""
    trades = sum(s.node.counters["trades_sold"] + s.node.counters["trades_bought"] for s in nodes)
    wh = sum(s.agent.counters["taken_wh"] for s in nodes if s.agent is not None)
    return trades, wh


def text_progress(stream: Any = sys.stderr, width: int = 30) -> Progress:
    """A plain-text progress line printed at most 20 times a run (and when the scale changes)."""
    shown: tuple[int, float | None] | None = None

    def show(look: Look) -> None:
        nonlocal shown
        key = (int(look.fraction * 20), look.scale)
        if key == shown:
            return
        shown = key
        when = datetime.fromtimestamp(look.sim_time, timezone.utc)
        bar = "#" * int(look.fraction * width)
        pace = "" if look.scale is None else f", x{look.scale:g}"
        # "sim HH:MM UTC, N trades, X kWh" is parsed by bench/sim_scale.py; the date goes last.
        print(f"[{bar:<{width}}] {100 * look.fraction:3.0f}% sim {when:%H:%M} UTC, {look.trades} trades, "
              f"{look.wh / 1000:.1f} kWh{pace}, {when:%Y-%m-%d}", file=stream, flush=True)

    return show


def energy_by_slot(homes: Sequence[Household], start: int, end: int,
                   slot_len: int) -> dict[str, dict[int, int]]:
    """PV production and consumption of the community per slot, Wh (for the plot)."""
    prod: dict[int, int] = {}
    cons: dict[int, int] = {}
    for s in range(start, end, slot_len):
        pv = sum(h.production_wh(s, s + slot_len) for h in homes)
        grid = 0
        for h in homes:
            a, b = h.reading_at(s), h.reading_at(s + slot_len)
            grid += (b.import_wh - a.import_wh) - (b.export_wh - a.export_wh)
        prod[s], cons[s] = pv, pv + grid
    return {"production_by_slot": prod, "consumption_by_slot": cons}


def build_report(cfg: SimConfig, homes: Sequence[Household], receipts: Sequence[ReceiptRecord], *,
                 slot_len: int, reached: int, roles: dict[str, Any], traffic: dict[str, int],
                 agents: dict[str, int], attacks: dict[str, dict[str, Any]], setup_s: float, run_s: float,
                 wall_s: float, cpu_s: float, peak_rss: int, workers: int | None,
                 pace: dict[str, Any] | None, log_counts: dict[str, int], plot: bool,
                 detail: bool, stopped: str | None = None) -> dict[str, Any]:
    """The report of a run; settles the slots in ``[cfg.start, reached)``.

    With ``detail`` the report carries ``accounts`` (the :class:`Accounts`,
    for ``--csv``); callers pop it before printing JSON.
    """
    end = cfg.start + max(0, reached - cfg.start) // slot_len * slot_len  # a stop in the warm-up: nothing
    accounts = settle_window(homes, receipts, cfg.start, end, slot_len, detail=detail)
    best = matchable_wh(homes, cfg.start, end, slot_len, cfg.agent.min_wh)
    fid = fidelity(accounts.delivered_wh, best)
    if cfg.markets > 1:
        # What separate markets could trade at most: each market's own bound, summed.
        groups: dict[int, list[Household]] = {}
        for h in homes:
            groups.setdefault(cfg.market_of(h.index), []).append(h)
        inside = sum(matchable_wh(g, cfg.start, end, slot_len, cfg.agent.min_wh) for g in groups.values())
        fid["markets"] = {"count": cfg.markets, "size": cfg.market_size, **fidelity(accounts.delivered_wh, inside)}
    report: dict[str, Any] = {
        "scenario": cfg.scenario, "nodes": cfg.nodes, "hours": cfg.hours, "seed": cfg.seed,
        "start_utc": datetime.fromtimestamp(cfg.start, timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "end_utc": datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "warmup_min": cfg.warmup // 60,
        "profiles": cfg.profiles,
        "transport": "memory" if cfg.memory else "tcp-loopback", "store": cfg.store,
        "time": "virtual" if cfg.virtual else "wall-clock",
        "time_scale": None if cfg.virtual else cfg.time_scale,
        "workers": workers,
        **summary(accounts),
        "fidelity": fid,
        "stopped": stopped or (pace.get("stopped") if pace else None),
        "pace": pace,
        "messages": traffic.get("messages", 0),
        "messages_per_s": traffic.get("messages", 0) / max(run_s, 1e-9),
        "bytes": traffic.get("bytes", 0),
        "handshakes": traffic.get("handshakes", 0),
        "handshakes_per_s": traffic.get("handshakes", 0) / max(wall_s, 1e-9),
        "handshake_failures": traffic.get("handshake_failures", 0),
        "congestion": {"feedback_sent": traffic.get("feedback_sent", 0),
                       "policed": traffic.get("policed", 0), "bans": traffic.get("bans", 0)},
        "agents": agents,
        "roles": roles,
        "attacks": attacks,
        "log_events": dict(sorted(log_counts.items())),
        "setup_s": round(setup_s, 3),
        "run_s": round(run_s, 3),
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        "peak_rss_bytes": peak_rss,
        "plot_data": {"prices": accounts.prices, "traded_by_slot": accounts.traded_by_slot,
                      **(energy_by_slot(homes, cfg.start, end, slot_len) if plot else {})},
    }
    if detail:
        report["accounts"] = accounts
    return report


class Interruption:
    """Ctrl-C (SIGINT) or SIGTERM ends a run early; the run then reports the slots it finished.

    :meth:`watch` runs as a task of the run's loop: at the first signal it
    records which (``signal``) and calls ``stop``. Only the ``p2pd sim``
    command asks for it (signals belong to the program, not to a caller
    that embeds run_sim); while it watches, the signals do not raise
    KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def reason(self) -> str | None:
        return None if self.signal is None else f"interrupted ({self.signal})"

    @property
    def exit_code(self) -> int:
        """The shell's status for a program a signal ended: 128 + its number."""
        return 128 + int(signal.Signals[self.signal]) if self.signal else 0

    async def watch(self, stop: Callable[[], None], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                self.signal = signal.Signals(signum).name
                stop()
                return


class fast_switching:
    """``with``: a 0.5 ms GIL switch interval (store threads get their turn sooner), then restored."""

    def __enter__(self) -> None:
        self.previous = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)

    def __exit__(self, *exc: object) -> None:
        sys.setswitchinterval(self.previous)


# The cyclic collector's young generation runs every 700 net allocations by
# default. A simulated community allocates a few objects per frame and holds
# hundreds of thousands of long-lived ones (books, sessions, tasks), so the
# collector took a quarter of a 200-node run's CPU (72 against 97 s for the
# same midday window, 2026-12-01) while freeing little: most garbage here is
# freed by reference counting. 50,000 keeps cycles (trio's cancelled tasks
# and tracebacks) collected within a fraction of a simulated second.
SIM_GC_THRESHOLD = (50_000, 20, 100)


class rare_collections:
    """``with``: the cyclic collector runs at :data:`SIM_GC_THRESHOLD`, then as before."""

    def __enter__(self) -> None:
        self.previous = gc.get_threshold()
        gc.set_threshold(*SIM_GC_THRESHOLD)

    def __exit__(self, *exc: object) -> None:
        gc.set_threshold(*self.previous)
