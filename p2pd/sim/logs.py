"""The nodes' log lines during a simulation: counted for the report, never mixed into its output.

A simulated community runs hundreds of daemons' worth of code in a few
processes; their warnings (a session that timed out, a refused dial) would
interleave with the progress bar. :func:`captured_logs` sends the ``p2pd``
logger's lines to a :class:`LogTally` (counts per event and reason, for the
report) and, if asked, to a file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

_EVENT = re.compile(r'event=("(?:[^"\\]|\\.)*"|\S+)')
_REASON = re.compile(r'\breason=("(?:[^"\\]|\\.)*"|\S+)')
_REPEATS = re.compile(r"\brepeats=(\d+)")


class LogTally(logging.Handler):
    """Counts log lines by ``event`` (and ``reason`` when the line has one): ``{"session_failed:TIMEOUT": 3}``.

    A sampled line's ``repeats=N`` (p2pd.log.Sampler) counts as the N occurrences it stands for too.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        event = _EVENT.search(text)
        reason = _REASON.search(text)
        key = event.group(1).strip('"') if event else record.levelname.lower()
        if reason:
            key += ":" + reason.group(1).strip('"')
        repeats = _REPEATS.search(text)
        self.counts[key] += 1 + (int(repeats.group(1)) if repeats else 0)


@contextmanager
def captured_logs(path: str | None = None) -> Iterator[LogTally]:
    """Route the ``p2pd`` logger to a tally (and ``path``, appended) for the ``with`` block."""
    logger = logging.getLogger("p2pd")
    saved = (logger.handlers[:], logger.propagate)
    tally = LogTally()
    handlers: list[logging.Handler] = [tally]
    if path is not None:
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file)
    logger.handlers = handlers
    logger.propagate = False
    try:
        yield tally
    finally:
        logger.handlers, logger.propagate = saved
        for h in handlers:
            h.close()
