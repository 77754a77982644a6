"""The simulator's in-memory pipe (p2pd/sim/pipe.py): bytes in order, EOF, broken ends."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pd.sim.pipe import pipe_pair


async def test_bytes_arrive_in_order_and_writes_never_block() -> None:
    a, b = pipe_pair()
    for i in range(100):
        a.send_all_nowait(bytes([i]))
    await a.send_all(b"!")
    got = await b.receive_some()
    assert got == bytes(range(100)) + b"!"
    a.send_all_nowait(b"abcdef")
    assert await b.receive_some(4) == b"abcd" and await b.receive_some(4) == b"ef"


async def test_a_waiting_reader_wakes_on_data_and_on_close(nursery: trio.Nursery) -> None:
    a, b = pipe_pair()
    got: list[bytes | bytearray] = []

    async def reader() -> None:
        while True:
            data = await b.receive_some()
            got.append(data)
            if not data:
                return

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    a.send_all_nowait(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    await a.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert got == [b"hello", b""]
    with pytest.raises(trio.ClosedResourceError):
        a.send_all_nowait(b"x")


async def test_writing_to_a_closed_reader_is_broken() -> None:
    a, b = pipe_pair()
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()
    await a.send_eof()


async def test_a_parked_reader_can_be_cancelled_and_a_second_reader_is_refused(
        nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    a, b = pipe_pair()
    with trio.move_on_after(1) as scope:  # the autojump clock ends the wait at once
        await b.receive_some()
    assert scope.cancelled_caught
    nursery.start_soon(b.receive_some)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.BusyResourceError):
        await b.receive_some()
    a.send_all_nowait(b"after")  # the parked reader takes it and the stream is free again
    await trio.testing.wait_all_tasks_blocked()
    a.send_all_nowait(b"more")
    assert await b.receive_some() == b"more"
