"""Calling the synchronous store from trio.

SQL stores block on I/O, so their calls run in a worker thread. The in-memory
store (simulations, tests) answers at once; a thread hand-off per call would
only add latency, so it is called inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from store import Repository

T = TypeVar("T")


async def call(repo: Repository, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` (a method of ``repo``) without blocking trio."""
    if getattr(repo, "blocking", True):
        return await trio.to_thread.run_sync(fn, *args)
    await trio.lowlevel.checkpoint()
    return fn(*args)
