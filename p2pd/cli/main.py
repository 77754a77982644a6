"""``p2pd`` command line: one subcommand per module, dispatched from here.

Each command module exposes ``register(subparsers)`` which adds its parser
and sets ``func`` (taking the parsed args, returning an exit code). Errors the
user can fix (:class:`~p2pd.errors.P2pdError`) print one line on stderr;
nothing prints a traceback for bad input; with ``--json`` every error is one
JSON object on stderr instead (p2pd/cli/output.py). Exit statuses (sysexits(3), as
systemd's own tools use them; the unit's ``RestartPreventExitStatus=`` lists
the two that a restart cannot cure):

* 0: done;
* 2 (:data:`EXIT_USAGE`): a wrong command line, or another user error;
* 69 (:data:`EXIT_UNAVAILABLE`, EX_UNAVAILABLE): something needed is busy
  or unreachable (:class:`~p2pd.errors.Unavailable`: the port is in use,
  the database server is down); systemd restarts the daemon;
* 78 (:data:`EXIT_CONFIG`, EX_CONFIG): the configuration, or a file it
  names, must change (:class:`~p2pd.errors.ConfigError`);
* 130: interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from p2pd import DISTRIBUTION, __version__
from p2pd.cli.output import (
    EXIT_USAGE,
    Parser,
    UsageError,
    error,
    parse_command_line,
    usage_error,
)
from p2pd.errors import ConfigError, P2pdError, Unavailable

# Modules providing subcommands; a missing optional one is skipped.
COMMAND_MODULES = (
    "p2pd.cli.keys",
    "p2pd.cli.run",
    "p2pd.cli.sim",
    "p2pd.cli.receipts",
    "p2pd.cli.meter",
    "p2pd.cli.revocation",
    "p2pd.cli.completion",
)

EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="p2pd", description="Peer-to-peer electricity trading daemon.")
    parser.add_argument("--version", action="version", version=f"p2pd {__version__} ({DISTRIBUTION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line("p2pd", build_parser(), list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except UsageError as exc:
        usage_error("p2pd", exc, as_json=as_json)
        return EXIT_USAGE
    except P2pdError as exc:
        kind, code = ("config", EXIT_CONFIG) if isinstance(exc, ConfigError) else (
            ("unavailable", EXIT_UNAVAILABLE) if isinstance(exc, Unavailable) else ("error", EXIT_USAGE))
        error("p2pd", kind, f"error: {exc}" if not as_json else str(exc), as_json=as_json)
        return code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
