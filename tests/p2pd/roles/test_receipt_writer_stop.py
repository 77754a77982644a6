"""Stopping the receipt writer while commits wait on it (issue 12, point 5), in-process.

The daemon runs the writer in its own nursery and the takes in the node's;
on SIGTERM the writer's nursery is cancelled first. A take whose receipt was
queued behind the batch on disk waited (shielded) for an answer that never
came, and the daemon logged ``stopping`` but never ``stopped``.

Each scenario runs in its own ``trio.run`` on a worker thread with the
autojump clock, so that a hang fails the test after a few seconds of real
time instead of hanging the test run.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from p2pd.errors import ShuttingDown
from p2pd.roles.receipt_writer import ReceiptWriter
from store import Committed, MemoryRepository, Outcome, ReceiptRecord

HANG_AFTER_S = 10.0  # real seconds: the scenarios below need well under one


def record(n: int) -> ReceiptRecord:
    tid = n.to_bytes(16, "big")
    return ReceiptRecord(tid, b"o" * 16, "alice", "bob", 1_800_000_000, 900, 1, 90_000, 1_000_000,
                         b"receipt" + tid, 1_799_999_000)


class GatedRepository(MemoryRepository):
    """A store whose commits block (in their worker thread) until the test opens the gate."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def commit_receipts(self, batch: list[ReceiptRecord]) -> list[Outcome]:
        self.entered.set()
        self.gate.wait(HANG_AFTER_S)
        return super().commit_receipts(batch)


def run_bounded(scenario: Callable[[], Awaitable[Any]]) -> Any:
    """``trio.run(scenario)`` (autojump clock) on a thread; fails if it has not returned in time."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseException as exc:  # reported below, in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_AFTER_S)
    assert not thread.is_alive(), "hung: a commit waited forever for a stopped writer"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_stopping_the_writer_answers_every_queued_commit() -> None:
    async def scenario() -> dict[int, Any]:
        repo = GatedRepository()
        writer = ReceiptWriter(repo)
        answers: dict[int, Any] = {}
        all_answered = trio.Event()

        async def take(n: int) -> None:
            try:
                answers[n] = await writer.commit(record(n))
            except ShuttingDown as exc:
                answers[n] = exc
            if len(answers) == 4:
                all_answered.set()

        async with trio.open_nursery() as node_nursery:  # as open_node's
            async with trio.open_nursery() as daemon_nursery:  # as run_daemon's
                await daemon_nursery.start(writer.run)
                node_nursery.start_soon(take, 1)
                await trio.to_thread.run_sync(repo.entered.wait)  # batch [1] is on its way to disk
                for n in (2, 3, 4):
                    node_nursery.start_soon(take, n)
                await trio.testing.wait_all_tasks_blocked()  # 2, 3, 4 queued behind it
                daemon_nursery.cancel_scope.cancel()  # SIGTERM: the writer's nursery goes first
                repo.gate.set()
            # The batch on disk finished; the commits behind it were refused.
            with trio.fail_after(5):
                await all_answered.wait()
            node_nursery.cancel_scope.cancel()
            try:  # and a commit after the stop is refused at once
                await writer.commit(record(5))
            except ShuttingDown as exc:
                answers[5] = exc
        return answers

    answers = run_bounded(scenario)
    assert isinstance(answers[1], Committed)
    for n in (2, 3, 4, 5):
        assert isinstance(answers[n], ShuttingDown) and "shutting down" in str(answers[n])


def test_a_cancelled_caller_sees_its_cancellation_not_the_shutdown() -> None:
    """Components cancelled with the writer end with Cancelled: a clean exit, no error."""

    async def scenario() -> bool:
        repo = GatedRepository()
        writer = ReceiptWriter(repo)
        async with trio.open_nursery() as daemon_nursery:
            await daemon_nursery.start(writer.run)
            daemon_nursery.start_soon(writer.commit, record(1))
            await trio.to_thread.run_sync(repo.entered.wait)
            daemon_nursery.start_soon(writer.commit, record(2))
            await trio.testing.wait_all_tasks_blocked()
            daemon_nursery.cancel_scope.cancel()
            repo.gate.set()
        return True  # no exception group: every task ended with Cancelled

    assert run_bounded(scenario)
