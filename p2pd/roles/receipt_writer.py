"""Group commit of trade receipts.

Every receipt is committed (SQLite WAL, synchronous=FULL) before anyone is
told it exists. One fsync per trade caps a gateway at a few thousand trades a
second at best; instead one writer task commits, in one transaction, every
receipt that arrived while the previous transaction was on disk. Durability is
never weakened: each caller's ``commit`` returns only after the transaction
holding its receipt has committed.

Stopping (the daemon cancels the writer's nursery before the node's, where
takes wait): the batch on its way to disk finishes (shielded), then every
commit still queued, and every later one, fails with
:class:`~p2pd.errors.ShuttingDown`. So no caller waits forever on a writer
that is gone, and none is told a receipt exists that is not on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pd import storage
from p2pd.errors import ShuttingDown
from p2pd.market.trade import Refused
from protocol import Reason
from store import Outcome, ReceiptRecord, Repository, StorageUnavailable

COMMIT_REFUSALS = (StorageUnavailable, ShuttingDown)
"""What :meth:`ReceiptWriter.commit` raises when the receipt was not committed
for a reason that is nobody's fault in the trade: an owner answers the take
with :func:`commit_refusal` and keeps the session."""


def commit_refusal(exc: BaseException) -> Refused:
    """The refusal for a take whose receipt could not be committed (one of
    :data:`COMMIT_REFUSALS`): STORAGE_UNAVAILABLE, or SHUTDOWN while the
    node stops. The taker may retry with the same trade id; it gets the
    receipt if the commit did happen."""
    if isinstance(exc, ShuttingDown):
        return Refused(Reason.SHUTDOWN, "the owner is shutting down; retry later with the same trade id")
    return Refused(Reason.STORAGE_UNAVAILABLE, "the owner's store cannot commit receipts now "
                   "(disk full or I/O error); retry later with the same trade id")


@dataclass(eq=False)
class _Pending:
    record: ReceiptRecord
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None
    error: BaseException | None = None


class ReceiptWriter:
    """Batches ``commit`` calls into transactions of up to ``max_batch``."""

    def __init__(self, repo: Repository, *, max_batch: int = 256) -> None:
        self.repo = repo
        self.max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Pending](max_batch * 4)
        self.transactions = 0
        self.receipts = 0
        self.stopped = False
        self.on_commit: list[Callable[[int, float], None]] = []
        """Called after each transaction with its receipts and its wall-clock seconds (metrics)."""
        self._inflight: list[_Pending] = []

    async def commit(self, record: ReceiptRecord) -> Outcome:
        """Commit ``record`` durably; returns Committed, Duplicate or Insufficient.

        Raises whatever the store raised for the batch (e.g. StoreError,
        StorageUnavailable), or :class:`ShuttingDown` if the writer stopped
        before the record's batch began; a caller that is itself being
        cancelled gets its ``Cancelled`` instead of the latter.
        """
        if self.stopped:
            raise ShuttingDown("the receipt writer has stopped: the node is shutting down")
        pending = _Pending(record)
        try:
            await self._send.send(pending)
        except trio.BrokenResourceError as exc:  # the writer stopped while we waited for room
            raise ShuttingDown("the receipt writer has stopped: the node is shutting down") from exc
        with trio.CancelScope(shield=True):
            # Once queued, the outcome must be awaited: the receipt may be on
            # disk, and our caller must not report a failure for it. The
            # writer always answers: a batch it began, or ShuttingDown.
            await pending.done.wait()
        if isinstance(pending.error, ShuttingDown):
            # Nothing was written: a caller that is being cancelled (a
            # component stopping with the writer) ends as cancelled, cleanly.
            await trio.lowlevel.checkpoint_if_cancelled()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; run it in the node's nursery with ``nursery.start``.

        When it ends (cancelled, or the store raised something else than an
        Exception), queued and later commits fail with ShuttingDown.
        """
        task_status.started()
        try:
            await self._serve()
        finally:
            self._stop()

    def _stop(self) -> None:
        """Refuse what is queued and what comes later; no await, so nothing slips in between."""
        self.stopped = True
        error = ShuttingDown("the receipt writer has stopped: the node is shutting down")
        for pending in self._inflight:  # only if a BaseException cut its batch short
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()
        for _ in range(1_000_000):  # bounded: the queue and the senders blocked on it are finite
            try:
                pending = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            pending.error = error
            pending.done.set()
        self._receive.close()  # senders still blocked, if any, get BrokenResourceError

    async def _serve(self) -> None:
        async for first in self._receive:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            records = [p.record for p in batch]
            self._inflight = batch
            started = time.perf_counter()
            try:
                with trio.CancelScope(shield=True):
                    outcomes = await storage.call(self.repo, self.repo.commit_receipts, records)
            except Exception as exc:  # reported to every waiter of this batch
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            self.transactions += 1
            self.receipts += len(batch)
            elapsed = time.perf_counter() - started
            for hook in self.on_commit:
                hook(len(batch), elapsed)
            for p, outcome in zip(batch, outcomes, strict=True):
                p.outcome = outcome
                p.done.set()
            self._inflight = []
