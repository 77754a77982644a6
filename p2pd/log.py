"""Structured logging: one line per event, ``key=value`` pairs, to stderr.

journald keeps stderr; logfmt lines stay greppable and machine-readable.
Usage: ``log.info("handshake_failed", peer="127.0.0.1:5", reason="KEY_MISMATCH")``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
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


def _write(level: int, event: str, fields: dict[str, Any]) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, format_event(event, fields))


@dataclass
class _Cause:
    level: int
    event: str
    next_at: float
    repeats: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class Sampler:
    """Log lines a peer can trigger at will, per cause, sampled.

    The first occurrence of a cause (an event and, e.g., its reason) is
    written at once; later ones at most once every ``interval`` seconds, with
    ``repeats=N``, the occurrences not written since the previous line. Causes
    still holding repeats get their summary line at the first sampled call
    after their interval, whatever its cause. So a stranger or a member who
    triggers a line thousands of times a second costs the journal about one
    line per cause and interval; the node's counters (``p2pctl status``)
    still count every occurrence.

    Causes are keyed by the caller: never key on what a stranger chooses (an
    address, a port), only on reasons and authenticated member ids. At most
    ``max_causes`` are tracked; the least recently seen is summarised and
    forgotten first. Time is passed in (``now``, seconds).
    """

    def __init__(self, interval: float = 60.0, max_causes: int = 512) -> None:
        self.interval = interval
        self.max_causes = max_causes
        self.suppressed = 0
        self.written = 0
        self._causes: OrderedDict[str, _Cause] = OrderedDict()
        self._sweep_at = 0.0

    def info(self, now: float, event: str, cause: str = "", **fields: Any) -> bool:
        return self.emit(logging.INFO, now, event, cause, fields)

    def warning(self, now: float, event: str, cause: str = "", **fields: Any) -> bool:
        return self.emit(logging.WARNING, now, event, cause, fields)

    def debug(self, now: float, event: str, cause: str = "", **fields: Any) -> bool:
        return self.emit(logging.DEBUG, now, event, cause, fields)

    def exception(self, now: float, event: str, exc: BaseException, cause: str = "",
                  **fields: Any) -> bool:
        """As :func:`exception` (ERROR, with traceback), sampled per cause."""
        try:
            error = f"{type(exc).__name__}: {exc}"[:200]
        except Exception:  # noqa: BLE001 - a broken __str__ must not hide the traceback
            error = type(exc).__name__
        text = "".join(traceback.format_exception(exc)).rstrip()
        return self.emit(logging.ERROR, now, event, cause or type(exc).__name__,
                         {**fields, "error": error, "traceback": text[-4000:]})

    def emit(self, level: int, now: float, event: str, cause: str,
             fields: dict[str, Any]) -> bool:
        """Write or count one occurrence; returns whether a line was written."""
        key = f"{event}:{cause}"
        c = self._causes.get(key)
        written = True
        if c is None:
            c = self._causes[key] = _Cause(level, event, now + self.interval)
            if len(self._causes) > self.max_causes:
                _, old = self._causes.popitem(last=False)
                self._summarise(old)
            self._line(level, event, fields)
        elif now >= c.next_at:
            self._line(level, event, {**fields, "repeats": c.repeats} if c.repeats else fields)
            c.repeats = 0
            c.next_at = now + self.interval
        else:
            c.repeats += 1
            c.last = fields
            self.suppressed += 1
            written = False
        self._causes.move_to_end(key)
        if now >= self._sweep_at:
            self._sweep(now)
        return written

    def _line(self, level: int, event: str, fields: dict[str, Any]) -> None:
        self.written += 1
        _write(level, event, fields)

    def _summarise(self, c: _Cause) -> None:
        if c.repeats:
            self._line(c.level, c.event, {**c.last, "repeats": c.repeats})
            c.repeats = 0

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self.interval
        for c in self._causes.values():
            if c.repeats and now >= c.next_at:
                self._summarise(c)
                c.next_at = now + self.interval

    def status(self) -> dict[str, int]:
        """Lines written and occurrences not written (summarised) so far."""
        return {"written": self.written, "suppressed": self.suppressed}


def setup(level: str = "info") -> None:
    """Send logs to stderr as ``level=... event=... k=v`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("level=%(levelname)s %(message)s"))
    root = logging.getLogger("p2pd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
