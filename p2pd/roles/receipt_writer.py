"""Group commit of trade receipts.

Every receipt is committed (SQLite WAL, synchronous=FULL) before anyone is
told it exists. One fsync per trade caps a gateway at a few thousand trades a
second at best; instead one writer task commits, in one transaction, every
receipt that arrived while the previous transaction was on disk. Durability is
never weakened: each caller's ``commit`` returns only after the transaction
holding its receipt has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from p2pd import storage
from p2pd.market.trade import Refused
from protocol import Reason
from store import Outcome, ReceiptRecord, Repository, StorageUnavailable

COMMIT_REFUSALS = (StorageUnavailable,)
"""What :meth:`ReceiptWriter.commit` raises when the receipt was not committed
for a reason that is nobody's fault in the trade: an owner answers the take
with :func:`commit_refusal` and keeps the session."""


def commit_refusal(exc: BaseException) -> Refused:
    """The refusal for a take whose receipt could not be committed (one of
    :data:`COMMIT_REFUSALS`): STORAGE_UNAVAILABLE. The taker may retry with
    the same trade id; it gets the receipt if the commit did happen."""
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

    async def commit(self, record: ReceiptRecord) -> Outcome:
        """Commit ``record`` durably; returns Committed, Duplicate or Insufficient.

        Raises whatever the store raised for the batch (e.g. StoreError).
        """
        pending = _Pending(record)
        await self._send.send(pending)
        with trio.CancelScope(shield=True):
            # Once queued, the outcome must be awaited: the receipt may be on
            # disk, and our caller must not report a failure for it.
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; run it in the node's nursery with ``nursery.start``."""
        task_status.started()
        async for first in self._receive:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            records = [p.record for p in batch]
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
            for p, outcome in zip(batch, outcomes, strict=True):
                p.outcome = outcome
                p.done.set()
