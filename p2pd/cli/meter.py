"""``p2pd meter read``: one reading from the configured (or a named) meter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import trio

from p2pd.errors import P2pdError


def register(sub: Any) -> None:
    meter = sub.add_parser("meter", help="meter tools")
    msub = meter.add_subparsers(dest="meter_command", metavar="ACTION", required=True)
    read = msub.add_parser("read", help="take one reading and print it")
    read.add_argument("--config", "-c", type=Path, help="use the [meter] section of this file")
    read.add_argument("--driver", help="driver name (instead of --config)")
    read.add_argument("--option", "-o", action="append", default=[], metavar="KEY=JSON",
                      help="driver option, value as JSON or a bare string; repeatable")
    read.add_argument("--timeout", type=float, default=60.0)
    read.add_argument("--json", action="store_true")
    read.set_defaults(func=cmd_read)


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise P2pdError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_read(args: argparse.Namespace) -> int:
    import meter_drivers

    if args.config is not None:
        from p2pd.components import SECTIONS
        from p2pd.config import load_config

        cfg = load_config(args.config, sections=SECTIONS).meter
        if cfg.driver is None:
            raise P2pdError(f"{args.config}: [meter].driver is \"none\"")
        driver, options = cfg.driver, {**cfg.options, **_options(args.option)}
    elif args.driver:
        driver, options = args.driver, _options(args.option)
    else:
        raise P2pdError("give --config FILE or --driver NAME")
    try:
        reading = trio.run(lambda: meter_drivers.read_once(driver, options, timeout=args.timeout))
    except meter_drivers.DriverError as exc:
        raise P2pdError(str(exc)) from exc
    if args.json:
        print(json.dumps(reading))
    else:
        for key, value in reading.items():
            print(f"{key:10} {value}")
    return 0
