"""``p2pd sim``: run a community of real nodes and print the report (docs/simulation.md).

Everything that can be refused is refused before the run starts (bounds,
the plot's path and format, the CSV directory, the profiles), in one line
with exit status 2. With ``--json`` stdout holds the JSON report only; the
readable report goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from p2pd.sim.community import (
    DEFAULT_TIME_SCALE,
    MAX_HOURS,
    MAX_NODES,
    NODES_AT_FULL_SCALE,
    SCENARIOS,
    SIM_START,
    SimConfig,
    SimError,
)

MAX_WORKERS = 64


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="simulate a community of nodes trading (issue 8)",
                       description="Run N real nodes with simulated (or loaded) meters and "
                                   "print energy, bills, traffic and attack outcomes.")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"community size, 2 to {MAX_NODES} (default 10, or every --profiles household)")
    p.add_argument("--scenario", choices=SCENARIOS, default="S1", help="S1 direct, S2 representatives, S3 representatives + broker, S4 broker with S1 fallback")
    p.add_argument("--hours", type=float, default=None,
                   help=f"simulated hours, 0.25 to {MAX_HOURS} (default 24, or what the profiles cover up to 24)")
    p.add_argument("--start", metavar="DATE", default=None,
                   help="when the run starts, UTC: YYYY-MM-DD or YYYY-MM-DDTHH:MM on a quarter hour "
                        "(default 2026-06-21, midsummer; with --profiles, where they start)")
    p.add_argument("--warm-up", type=int, default=0, metavar="MIN",
                   help="simulated minutes (whole quarter hours) the nodes trade before --start, "
                        "left out of the report: agents start in their steady state (default 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profiles", metavar="DIR",
                   help="households' load and PV from DIR/<member>.csv (format: docs/simulation.md)")
    p.add_argument("--write-profiles", metavar="DIR",
                   help="write the households' profiles over the window to DIR in the --profiles "
                        "format, and exit")
    p.add_argument("--attack", action="append", default=[], metavar="NAME",
                   help="run an attack (repeatable; 'list' shows them)")
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object on stdout (the readable one on stderr)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the run and who traded with whom (.png, .pdf, .svg; needs the 'plot' extra)")
    p.add_argument("--csv", metavar="DIR", help="write trades.csv, energy.csv, bills.csv and matrix.csv to DIR")
    p.add_argument("--memory", action="store_true",
                   help="in-memory streams instead of loopback TCP; with the memory store (its "
                        "default) the run is in virtual time")
    p.add_argument("--wall-clock", action="store_true",
                   help="with --memory: scaled wall-clock time instead of virtual time")
    p.add_argument("--time-scale", type=float, default=None,
                   help=f"wall-clock mode: simulated seconds per wall second to start with (default "
                        f"{DEFAULT_TIME_SCALE:g} up to {NODES_AT_FULL_SCALE} nodes per process, slower "
                        "in proportion above); the run slows down when the nodes fall behind")
    p.add_argument("--min-time-scale", type=float, default=None,
                   help="wall-clock mode: the slowest scale allowed; below it the run stops "
                        "(default 30; equal to --time-scale: never slow down)")
    p.add_argument("--workers", type=int, default=None,
                   help="loopback TCP mode: processes the nodes are spread over; virtual time with "
                        "--market-size: processes the markets are spread over (default: one per core)")
    p.add_argument("--store", choices=("sqlite", "memory"), default=None,
                   help="memory with --memory, sqlite otherwise")
    p.add_argument("--degree", type=int, default=4, help="peers each node dials at start")
    p.add_argument("--market-size", type=int, default=0, metavar="K",
                   help="S1: split the community into neighbourhood markets of about K households "
                        "each (by member index), each its own gossip mesh; trades stay inside "
                        "(default: one market of all)")
    p.add_argument("--log", metavar="FILE", help="append the nodes' log lines to FILE (else only counted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


ONE_MARKET_NOTE_NODES = 200
"""Above this many households in one market, ``p2pd sim`` says what it will cost and how to split them."""


def parse_start(text: str) -> int:
    """Unix seconds of ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM`` (UTC). Raises :class:`SimError`."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SimError(f"--start {text!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if not 2000 <= when.year <= 2100:
        raise SimError(f"--start {text!r}: the year must be between 2000 and 2100")
    return int(when.timestamp())


def config_from_args(args: argparse.Namespace) -> tuple[SimConfig, dict[str, Any]]:
    """The run's configuration and options; raises :class:`SimError` for anything out of bounds."""
    from p2pd.sim.attacks import check_attack_names
    from p2pd.sim.results import DEFAULT_MIN_TIME_SCALE, default_time_scale
    from p2pd.sim.workers import default_workers

    check_attack_names(args.attack)
    start = parse_start(args.start) if args.start else None
    nodes, hours = args.nodes, args.hours
    if args.profiles:
        from p2pd.sim.profiles import check_window, common_range, load_profiles, profile_files

        nodes = nodes if nodes is not None else len(profile_files(args.profiles))
        if not 2 <= nodes <= MAX_NODES:
            raise SimError(f"--nodes must be between 2 and {MAX_NODES} (got {nodes})")
        profiles = load_profiles(args.profiles, nodes)
        lo, hi = common_range(profiles)
        start = start if start is not None else -(-lo // 900) * 900
        hours = hours if hours is not None else max(0.25, min(24.0, (hi - start) // 900 * 900 / 3600))
        check_window(profiles, start - 60 * args.warm_up, start + int(hours * 3600))
    store = args.store or ("memory" if args.memory else "sqlite")
    # Virtual time needs everything in memory: real I/O cannot run under an
    # autojumping clock (it would jump while a worker thread or socket works).
    virtual = args.memory and store == "memory" and not args.wall_clock
    workers = args.workers if args.workers is not None else default_workers()
    if not 1 <= workers <= MAX_WORKERS:
        raise SimError(f"--workers must be between 1 and {MAX_WORKERS} (got {workers})")
    if args.workers is not None and args.memory and not (virtual and args.market_size):
        raise SimError("--workers is for the loopback TCP mode, or for --market-size in virtual time "
                       "(in-memory streams of one market stay in one process)")
    nodes = nodes if nodes is not None else 10
    if not 2 <= nodes <= MAX_NODES:  # here too: the starting scale below divides by it
        raise SimError(f"--nodes must be between 2 and {MAX_NODES} (got {nodes})")
    scale = args.time_scale
    if scale is None:
        per_process = nodes if args.memory else -(-nodes // min(workers, nodes))
        scale = default_time_scale(per_process)
    if not 1 <= scale <= 100_000:
        raise SimError(f"--time-scale must be between 1 and 100000 (got {scale:g})")
    min_scale = args.min_time_scale if args.min_time_scale is not None else min(DEFAULT_MIN_TIME_SCALE, scale)
    if not 1 <= min_scale <= scale:
        raise SimError(f"--min-time-scale must be between 1 and --time-scale ({scale:g}) "
                       f"(got {min_scale:g})")
    if not 1 <= args.degree <= 64:
        raise SimError(f"--degree must be between 1 and 64 (got {args.degree})")
    cfg = SimConfig(nodes=nodes, scenario=args.scenario, hours=hours if hours is not None else 24.0,
                    seed=args.seed, memory=args.memory, time_scale=scale, store=store,
                    degree=args.degree, attacks=tuple(dict.fromkeys(args.attack)), virtual=virtual,
                    start=start if start is not None else SIM_START, profiles=args.profiles,
                    warmup=60 * args.warm_up, market_size=args.market_size)
    return cfg, {"workers": workers, "min_time_scale": min_scale, "log_path": args.log}


def run(args: argparse.Namespace) -> int:
    from p2pd.sim.attacks import describe_attacks
    from p2pd.sim.logs import captured_logs
    from p2pd.sim.report import render
    from p2pd.sim.results import Interruption
    from p2pd.sim.run import run_sim, text_progress

    if "list" in args.attack:
        print(describe_attacks())
        return 0
    cfg, options = config_from_args(args)
    if args.write_profiles:
        return _write_profiles(cfg, args.write_profiles)
    if args.plot:
        from p2pd.sim.plot import check_plot_path

        check_plot_path(args.plot)
    if args.csv:
        from p2pd.sim.tables import check_csv_dir

        check_csv_dir(args.csv)
    if args.log:
        _check_writable(args.log, "--log")
    if cfg.scenario == "S1" and cfg.markets == 1 and cfg.nodes > ONE_MARKET_NOTE_NODES:
        print(f"p2pd sim: one market of {cfg.nodes} households: every offer reaches every node, so a day's "
              f"work grows with the square of --nodes (200 take minutes, 1000 hours); --market-size 50 "
              f"splits them into neighbourhood markets, run on every core", file=sys.stderr)
    progress = None if args.quiet else text_progress(sys.stderr)
    interruption = Interruption()
    with captured_logs(args.log) as tally:
        report = run_sim(cfg, progress=progress, plot=bool(args.plot), detail=bool(args.csv),
                         log_counts=lambda: dict(tally.counts), interruption=interruption, **options)
    accounts = report.pop("accounts", None)
    plot_data = report.pop("plot_data")
    out = sys.stderr if args.json else sys.stdout
    print(render(report), file=out, flush=True)
    if args.json:
        print(json.dumps(report, sort_keys=True, separators=(",", ":")), flush=True)
    code = 0
    # The report is out: a file that cannot be written now loses nothing else.
    if args.csv and accounts is not None:
        from p2pd.sim.tables import write_tables

        try:
            paths = write_tables(args.csv, report, accounts)
            print(f"p2pd sim: wrote {', '.join(paths)}", file=sys.stderr)
        except OSError as exc:
            print(f"p2pd: error: --csv {args.csv}: {exc}", file=sys.stderr)
            code = 1
    if args.plot:
        from p2pd.sim.plot import plot_run

        try:
            plot_run({**report, "plot_data": plot_data}, args.plot)
            print(f"p2pd sim: wrote {args.plot}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"p2pd: error: --plot {args.plot}: {exc}", file=sys.stderr)
            code = 1
    if report.get("stopped"):
        print(f"p2pd sim: stopped at {report['end_utc']} UTC: {report['stopped']}", file=sys.stderr)
        code = interruption.exit_code or 1
    return code


def _check_writable(path: str, option: str) -> None:
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise SimError(f"{option} {path}: {exc.strerror or exc}") from None


def _write_profiles(cfg: SimConfig, directory: str) -> int:
    from p2pd.sim.community import households
    from p2pd.sim.profiles import export_profiles

    try:
        paths = export_profiles(households(cfg, 900, 0), cfg.start, cfg.end, directory)
    except OSError as exc:
        raise SimError(f"--write-profiles {directory}: {exc.strerror or exc}") from None
    print(f"p2pd sim: wrote {len(paths)} profiles to {directory}", file=sys.stderr)
    return 0
