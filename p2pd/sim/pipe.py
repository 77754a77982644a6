"""A lean in-memory stream pair for the simulator.

``trio.testing.memory_stream_pair`` is built for testing stream code: every
``send_all`` passes a conflict detector, a checkpoint and a pump task step
before the bytes reach the other side. A simulated community sends millions
of frames, and that machinery was a large share of each frame's cost. Here a
direction is a byte buffer: ``send_all_nowait`` appends to it and wakes the
reader, and the reader takes whatever is there. Writes never block (the
buffer is unbounded, as trio's memory streams are), so
:class:`p2pd.net.peer.PeerConnection` writes synchronously
(``send_all_nowait``): no lock, no cancel scope, no scheduler round per frame.

Closing one end makes the other end read EOF (``b""``) once the buffer is
drained, and makes writes towards a closed reader fail with
``trio.BrokenResourceError``, like a socket.
"""

from __future__ import annotations

import trio


class _Direction:
    """The bytes in flight one way, and the task waiting to read them."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False  # the writer closed
        self.reader_closed = False
        self.reader: trio.lowlevel.Task | None = None  # parked in receive_some

    def wake(self) -> None:
        reader = self.reader
        if reader is not None:
            self.reader = None
            trio.lowlevel.reschedule(reader)

    async def wait(self) -> None:
        """Park until :meth:`wake` (a stream has one reader at a time, as trio requires)."""
        if self.reader is not None:
            raise trio.BusyResourceError("another task is already reading this stream")
        self.reader = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class PipeStream(trio.abc.HalfCloseableStream):
    """One end of :func:`pipe_pair`."""

    def __init__(self, incoming: _Direction, outgoing: _Direction) -> None:
        self._in = incoming
        self._out = outgoing
        self._closed = False

    def send_all_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for the other end at once.

        Raises ``trio.ClosedResourceError`` if this end is closed and
        ``trio.BrokenResourceError`` if the other end stopped reading.
        """
        if self._closed or self._out.eof:
            raise trio.ClosedResourceError("this end is closed")
        if self._out.reader_closed:
            raise trio.BrokenResourceError("the other end is closed")
        if data:
            self._out.buf += data
            self._out.wake()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.send_all_nowait(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self._out.eof:
            self._out.eof = True
            self._out.wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        incoming = self._in
        while not incoming.buf and not incoming.eof:
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
            await incoming.wait()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        if not incoming.buf:
            await trio.lowlevel.checkpoint()
            return b""
        if max_bytes is None or max_bytes >= len(incoming.buf):
            data = bytes(incoming.buf)
            incoming.buf.clear()
        else:
            data = bytes(incoming.buf[:max_bytes])
            del incoming.buf[:max_bytes]
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._out.wake()
            self._in.reader_closed = True
            self._in.buf.clear()
            self._in.wake()
        await trio.lowlevel.checkpoint()


def pipe_pair() -> tuple[PipeStream, PipeStream]:
    """Two connected ends: what one sends, the other receives."""
    a_to_b, b_to_a = _Direction(), _Direction()
    return PipeStream(b_to_a, a_to_b), PipeStream(a_to_b, b_to_a)
