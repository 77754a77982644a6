"""Calling the synchronous store from trio, and watching whether it can write.

SQL stores block on I/O, so their calls run in a worker thread. The in-memory
store (simulations, tests) answers at once; a thread hand-off per call would
only add latency, so it is called inline. :class:`StoreHealth` tracks whether
the store's storage takes writes (a full disk), for the daemon's status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import trio

from p2pd import log
from store import Repository

T = TypeVar("T")


async def call(repo: Repository, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` (a method of ``repo``) without blocking trio."""
    if getattr(repo, "blocking", True):
        return await trio.to_thread.run_sync(fn, *args)
    await trio.lowlevel.checkpoint()
    return fn(*args)


class StoreHealth:
    """Whether the store can write: for ``status``, systemd's STATUS= and the log.

    Fed by the SQL store's ``on_write`` hook (from any thread; the calls take
    a lock): a write the storage refused (``store.StorageUnavailable``: disk
    full, I/O error, read-only) makes the store *failing* from that moment;
    it is *ok* again at the first write that commits a change ``quiet_s``
    seconds or more after the last refused one, so it recovers by itself once
    space returns. (On a nearly full disk small writes still fit while larger
    ones fail; the quiet time keeps that from flapping.) Each change of state
    is logged once (``store_failing`` at error level, ``store_recovered`` at
    info), never each refused write. ``on_change`` is called (in the
    observing thread) after each change. ``clock`` gives wall-clock seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, quiet_s: float = 5.0) -> None:
        self._clock = clock
        self.quiet_s = quiet_s
        self._last_refused = 0.0
        self._lock = threading.Lock()
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.refused = 0
        """Writes refused since the store started failing (0 while ok)."""
        self.episodes = 0
        """Times the store went from ok to failing since the daemon started."""
        self.on_change: Callable[[], None] | None = None

    @property
    def ok(self) -> bool:
        return self.failing_since is None

    def observe(self, error: BaseException | None) -> None:
        """A write committed (``None``) or was refused by the storage (the error)."""
        with self._lock:
            now = self._clock()
            if error is not None:
                self.last_error = str(error)[:200]
                self.refused += 1
                self._last_refused = now
                if self.failing_since is not None:
                    return
                self.failing_since = now
                self.episodes += 1
                log.error("store_failing", error=self.last_error)
            else:
                if self.failing_since is None or now - self._last_refused < self.quiet_s:
                    return
                log.info("store_recovered", failing_s=round(now - self.failing_since, 1),
                         refused=self.refused, error=self.last_error)
                self.failing_since = None
                self.refused = 0
        if self.on_change is not None:
            self.on_change()

    def status(self) -> dict[str, Any]:
        """``{"state": "ok"|"failing", "since", "last_error", "refused", "episodes"}``."""
        with self._lock:
            return {"state": "ok" if self.failing_since is None else "failing",
                    "since": self.failing_since, "last_error": self.last_error,
                    "refused": self.refused, "episodes": self.episodes}

    def summary(self) -> str | None:
        """One line while failing (for systemd's STATUS=), None while ok."""
        with self._lock:
            if self.failing_since is None:
                return None
            since = datetime.fromtimestamp(self.failing_since, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            return f"store failing since {since}: {self.last_error}"
