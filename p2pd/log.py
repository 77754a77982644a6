"""Structured logging: one line per event, ``key=value`` pairs, to stderr.

journald keeps stderr; logfmt lines stay greppable and machine-readable.
Usage: ``log.info("handshake_failed", peer="127.0.0.1:5", reason="KEY_MISMATCH")``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

_logger = logging.getLogger("p2pd")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\r\t'):
        text = '"' + (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                      .replace("\r", "\\r")) + '"'
    return text


def format_event(event: str, fields: dict[str, Any]) -> str:
    parts = [f"event={_quote(event)}"]
    parts += [f"{key}={_quote(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


def debug(event: str, **fields: Any) -> None:
    if _logger.isEnabledFor(logging.DEBUG):
        _logger.debug(format_event(event, fields))


def info(event: str, **fields: Any) -> None:
    if _logger.isEnabledFor(logging.INFO):
        _logger.info(format_event(event, fields))


def warning(event: str, **fields: Any) -> None:
    _logger.warning(format_event(event, fields))


def error(event: str, **fields: Any) -> None:
    _logger.error(format_event(event, fields))


def exception(event: str, exc: BaseException, **fields: Any) -> None:
    """Log ``event`` at error level with ``exc`` and its traceback, as one line.

    Adds ``error="Type: message"`` (message cut to 200 characters) and
    ``traceback="..."`` (newlines escaped, so journald keeps one entry) to
    ``fields``. For bugs caught at a boundary that must go on (a control
    request, a reload); never raises.
    """
    try:
        error = f"{type(exc).__name__}: {exc}"[:200]
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the traceback
        error = type(exc).__name__
    text = "".join(traceback.format_exception(exc)).rstrip()  # copes with a broken __str__ itself
    _logger.error(format_event(event, {**fields, "error": error, "traceback": text[-4000:]}))


def setup(level: str = "info") -> None:
    """Send logs to stderr as ``level=... event=... k=v`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("level=%(levelname)s %(message)s"))
    root = logging.getLogger("p2pd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
