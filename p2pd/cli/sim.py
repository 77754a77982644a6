"""``p2pd sim``: run a community of real nodes in one process and print the report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from p2pd.sim.community import DEFAULT_TIME_SCALE, SCENARIOS, SimConfig


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="simulate a community of nodes trading (issue 8)",
                       description="Run N real nodes in one process with simulated meters and "
                                   "print energy, bills, traffic and attack outcomes.")
    p.add_argument("--nodes", type=int, default=10, help="community size (default 10)")
    p.add_argument("--scenario", choices=SCENARIOS, default="S1", help="S1 direct, S2 representatives, S3 representatives + broker, S4 broker with S1 fallback")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--attack", action="append", default=[], metavar="NAME",
                   help="run an attack (repeatable; 'list' shows them)")
    p.add_argument("--json", action="store_true", help="end with one JSON line (the report)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the day (needs the 'plot' extra)")
    p.add_argument("--memory", action="store_true",
                   help="in-memory streams instead of loopback TCP; with the memory store (its "
                        "default) the run is in virtual time")
    p.add_argument("--wall-clock", action="store_true",
                   help="with --memory: scaled wall-clock time instead of virtual time")
    p.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                   help=f"wall-clock mode: simulated seconds per wall second (default {DEFAULT_TIME_SCALE:g})")
    p.add_argument("--store", choices=("sqlite", "memory"), default=None,
                   help="memory with --memory, sqlite otherwise")
    p.add_argument("--degree", type=int, default=4, help="peers each node dials at start")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2pd.sim.attacks import check_attack_names, describe_attacks
    from p2pd.sim.report import render
    from p2pd.sim.run import run_sim, text_progress

    if "list" in args.attack:
        print(describe_attacks())
        return 0
    check_attack_names(args.attack)
    store = args.store or ("memory" if args.memory else "sqlite")
    # Virtual time needs everything in memory: real I/O cannot run under an
    # autojumping clock (it would jump while a worker thread or socket works).
    virtual = args.memory and store == "memory" and not args.wall_clock
    cfg = SimConfig(nodes=args.nodes, scenario=args.scenario, hours=args.hours, seed=args.seed,
                    memory=args.memory, time_scale=args.time_scale, store=store,
                    degree=args.degree, attacks=tuple(dict.fromkeys(args.attack)), virtual=virtual)
    if args.plot:
        from p2pd.sim.plot import require_matplotlib
        require_matplotlib()
    progress = None if args.quiet else text_progress(sys.stderr)
    report = run_sim(cfg, progress=progress, plot=bool(args.plot))
    if args.plot:
        from p2pd.sim.plot import plot_day
        plot_day(report, args.plot)
    plot_data = report.pop("plot_data")
    del plot_data
    print(render(report))
    if args.json:
        print(json.dumps(report, sort_keys=True, separators=(",", ":")))
    return 0
