"""``p2pd sim``: run a community of real nodes in one process and print the report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from p2pd.sim import DEFAULT_TIME_SCALE, SCENARIOS, SimConfig


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="simulate a community of nodes trading (issue 8)",
                       description="Run N real nodes in one process with simulated meters and "
                                   "print energy, bills, traffic and attack outcomes.")
    p.add_argument("--nodes", type=int, default=10, help="community size (default 10)")
    p.add_argument("--scenario", choices=SCENARIOS, default="S1", help="S1 (S2-S4: not built yet)")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--attack", action="append", default=[], metavar="NAME",
                   help="run an attack (repeatable; 'list' shows them)")
    p.add_argument("--json", action="store_true", help="end with one JSON line (the report)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the day (needs the 'plot' extra)")
    p.add_argument("--memory", action="store_true", help="in-memory streams instead of loopback TCP")
    p.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                   help=f"simulated seconds per wall second (default {DEFAULT_TIME_SCALE:g})")
    p.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    p.add_argument("--degree", type=int, default=4, help="peers each node dials at start")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2pd.report import render
    from p2pd.sim_attacks import describe_attacks, check_attack_names
    from p2pd.sim_run import simulate, text_progress

    if "list" in args.attack:
        print(describe_attacks())
        return 0
    check_attack_names(args.attack)
    cfg = SimConfig(nodes=args.nodes, scenario=args.scenario, hours=args.hours, seed=args.seed,
                    memory=args.memory, time_scale=args.time_scale, store=args.store,
                    degree=args.degree, attacks=tuple(dict.fromkeys(args.attack)))
    if args.plot:
        from p2pd.sim_plot import require_matplotlib
        require_matplotlib()
    # Hundreds of tasks share one thread with the stores' worker threads: a
    # shorter GIL switch interval cuts the latency of each store call.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    progress = None if args.quiet else text_progress(sys.stderr)
    try:
        report = trio.run(lambda: simulate(cfg, progress=progress, plot=bool(args.plot)))
    finally:
        sys.setswitchinterval(previous)
    if args.plot:
        from p2pd.sim_plot import plot_day
        plot_day(report, args.plot)
    plot_data = report.pop("plot_data")
    del plot_data
    print(render(report))
    if args.json:
        print(json.dumps(report, sort_keys=True, separators=(",", ":")))
    return 0
