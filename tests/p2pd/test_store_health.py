"""StoreHealth (ok / failing, logged once per change) and a notifier that never blocks (issue 12)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pd.notify import Notifier
from p2pd.storage import StoreHealth
from store import StorageUnavailable


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def p2pd_log() -> Iterator[list[str]]:
    """The p2pd logger's lines at INFO and above (whatever an earlier log.setup did to it)."""
    logger = logging.getLogger("p2pd")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_health_fails_once_and_recovers_after_a_quiet_write(p2pd_log: list[str]) -> None:
    now = [1_800_000_000.0]
    health = StoreHealth(lambda: now[0], quiet_s=5.0)
    changes: list[bool] = []
    health.on_change = lambda: changes.append(health.ok)
    full = StorageUnavailable("database or disk is full")
    health.observe(None)  # writes while ok change nothing
    assert health.ok and health.summary() is None and changes == []
    for _ in range(3):
        health.observe(full)
        now[0] += 1
    health.observe(None)  # a small write that still fits: not yet recovered
    assert not health.ok and health.refused == 3
    assert health.status() == {"state": "failing", "since": 1_800_000_000.0,
                               "last_error": "database or disk is full", "refused": 3, "episodes": 1}
    assert health.summary() == "store failing since 2027-01-15 08:00:00Z: database or disk is full"
    now[0] += 5
    health.observe(None)
    assert health.ok and health.status()["refused"] == 0 and changes == [False, True]
    assert sum("event=store_failing" in m for m in p2pd_log) == 1
    assert sum("event=store_recovered" in m for m in p2pd_log) == 1
    health.observe(full)
    assert health.status()["episodes"] == 2 and changes == [False, True, False]


def test_notifier_drops_instead_of_blocking_when_nobody_reads(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()
        sent = [notifier.notify("WATCHDOG=1") for _ in range(1000)]  # the kernel queues ~10
        assert time.monotonic() - started < 5
        assert sent[0] and not sent[-1] and notifier.dropped > 0
        manager.settimeout(1)
        while True:  # read the queue empty: sending works again
            try:
                manager.recv(64)
            except TimeoutError:
                break
        assert notifier.status("member alice: 1 sessions") and notifier.dropped == 0
        assert manager.recv(64) == b"STATUS=member alice: 1 sessions"
