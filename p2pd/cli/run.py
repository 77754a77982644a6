"""``p2pd run --config FILE`` and ``p2pd config check FILE``."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from p2pd.components import SECTIONS
from p2pd.config import Config, describe, load_config
from p2pd.errors import ConfigError, Unavailable

DEFAULT_CONFIG = Path("/etc/p2pd/p2pd.toml")


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the daemon (foreground; logs to stderr)")
    run.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG,
                     help=f"TOML configuration file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="configuration file tools")
    csub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="print the effective configuration as JSON")
    check.set_defaults(func=cmd_check)


def _load(path: Path) -> Config:
    # The daemon's components' sections, as `p2pd run` and reload use them:
    # config check accepts exactly what the daemon will.
    return load_config(path, sections=SECTIONS)


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if ``p2pd run`` would start with the file (every check it makes
    before serving: :func:`p2pd.daemon.check_startup`); ConfigError (exit 78)
    names the bad key otherwise, Unavailable (exit 69) an unreachable store."""
    from p2pd.daemon import check_startup

    config = _load(args.file)
    with _named(args.file):
        check_startup(config)
    if args.json:
        print(json.dumps(describe(config), indent=2))
    else:
        print(f"{args.file}: ok (member keys in {config.node.keys_dir}, "
              f"control socket {config.node.control_socket})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from p2pd.daemon import STOP_TIMEOUT_S, run_daemon

    config = _load(args.config)
    with _named(args.config):
        trio.run(functools.partial(run_daemon, config, stop_timeout=STOP_TIMEOUT_S))
    return 0


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """Put the file's name in front of a start-up error, as loading it does."""
    try:
        yield
    except (ConfigError, Unavailable) as exc:
        raise type(exc)(f"{path}: {exc}") from exc
