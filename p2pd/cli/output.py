"""How ``p2pd`` and ``p2pctl`` report errors: one line for people, or one JSON object.

With ``--json`` anywhere on the command line every error goes to stderr as
one JSON object, whatever went wrong (docs/control-api.md, "p2pctl"):

* an error the daemon sent, exactly as sent:
  ``{"error": {"code": -32007, "message": "...", "data": {"reason": ..., "remaining_wh": ...}}}``;
* an error of the command itself, with a ``kind`` instead of a ``code``:
  ``{"error": {"kind": "usage", "message": "...", "usage": "usage: p2pctl post ..."}}``.
  Kinds: ``usage`` (exit 2), ``not_running`` (p2pctl, exit 3), ``output``
  (a file that cannot be written, exit 1), ``config`` (exit 78),
  ``unavailable`` (exit 69), ``rejected`` (a credential, exit 1), ``error``.

A warning (the command goes on) is ``{"warning": {"kind": ..., "message": ...}}``.
Standard library only: p2pctl imports this and must start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

EXIT_OK = 0
EXIT_USAGE = 2  # a wrong command line, or another user error (both commands)


class UsageError(Exception):
    """A command line argparse refused; ``usage`` is the (sub)command's usage text."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing and exiting.

    Subcommand parsers made with ``add_subparsers().add_parser`` are of the
    same class, so every level reports alike.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage().strip())


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` was given (before a ``--``), even if the rest does not parse."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def error(prog: str, kind: str, message: str, *, as_json: bool, file: IO[str] | None = None,
          **fields: Any) -> None:
    """Print an error of the command itself: ``prog: message`` or its JSON object."""
    out = file or sys.stderr
    if as_json:
        print(json.dumps({"error": {"kind": kind, "message": message, **fields}}), file=out)
    else:
        print(f"{prog}: {message}", file=out)


def parse_command_line(prog: str, parser: argparse.ArgumentParser,
                       argv: list[str]) -> argparse.Namespace | int:
    """``argv`` parsed, or the exit code to return at once.

    A refused command line is reported (:func:`usage_error`) and gives
    :data:`EXIT_USAGE`; ``--help`` and ``--version`` have printed and give
    :data:`EXIT_OK`.
    """
    try:
        return parser.parse_args(argv)
    except UsageError as exc:
        usage_error(prog, exc, as_json=wants_json(argv))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK


def usage_error(prog: str, exc: UsageError, *, as_json: bool) -> None:
    """argparse's own form (usage, then ``prog: error: message``) or its JSON object."""
    if as_json:
        error(prog, "usage", exc.message, as_json=True, usage=exc.usage)
    else:
        print(exc.usage, file=sys.stderr)
        print(f"{prog}: error: {exc.message}", file=sys.stderr)


def warning(prog: str, kind: str, message: str, *, as_json: bool, **fields: Any) -> None:
    """A warning on stderr; the command goes on."""
    if as_json:
        print(json.dumps({"warning": {"kind": kind, "message": message, **fields}}), file=sys.stderr)
    else:
        print(f"{prog}: warning: {message}", file=sys.stderr)
