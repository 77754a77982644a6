"""The control socket under operator mistakes and hostile local clients (issue 13, points 5 and 6).

Idle clients cannot lock the operator out, oversized lines are handled the
same whatever their length, ``events.subscribe`` refuses what is not an event
name, and any JSON number is a valid request id.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import write_member

from p2pd.context import DaemonContext
from p2pd.control.jsonrpc import (
    MAX_REQUEST,
    READ_CHUNK,
    REQUEST_TOO_LARGE,
    TOO_BUSY,
)
from p2pd.control.server import (
    INVALID_PARAMS,
    ControlServer,
    Param,
    Subscription,
)
from p2pd.events import EVENT_TYPES, EventBus, SessionOpened


class Conn:
    """A test client over a memory stream: send bytes, read JSON lines."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, method: str, params: Any = None, id: Any = 1) -> None:
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            req["params"] = params
        await self.send(json.dumps(req).encode() + b"\n")

    async def read(self) -> Any:
        with trio.fail_after(30):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method: str, params: Any = None, id: Any = 1) -> Any:
        await self.request(method, params, id)
        return await self.read()

    async def closed(self) -> bool:
        with trio.fail_after(30):
            return await self.stream.receive_some(10) == b""


def make_server(**kwargs: Any) -> tuple[ControlServer, EventBus]:
    server = ControlServer(**kwargs)
    bus = EventBus()

    async def stream(sub: Subscription) -> None:
        async with bus.subscribe() as rx:
            await sub.respond({"subscribed": True})
            async for ev in rx:
                await sub.notify("event", ev.to_json())

    server.register("echo", lambda text: {"text": text}, {"text": Param(str)})
    server.register("stream", stream, streaming=True)
    return server, bus


async def connect(nursery: trio.Nursery, server: ControlServer) -> Conn:
    client, srv = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_client, srv, None)
    await trio.testing.wait_all_tasks_blocked()
    return Conn(client)


# --- 6: idle clients cannot lock the operator out ----------------------------------------


async def test_idle_clients_holding_every_slot_do_not_lock_the_operator_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server()  # the daemon's limits: 32 clients, 300 s idle timeout
    hogs = []
    for _ in range(server.max_clients):
        hogs.append(await connect(nursery, server))
        await trio.sleep(1)  # each hog connects a second after the previous one
    assert server.clients == server.max_clients
    start = trio.current_time()
    operator = await connect(nursery, server)
    assert (await operator.call("echo", {"text": "status"}))["result"] == {"text": "status"}
    assert trio.current_time() - start < 1  # not after the hogs' 300 s idle timeout
    # The hog idle for longest made room; the others are still connected.
    assert await hogs[0].closed()
    await trio.testing.wait_all_tasks_blocked()
    assert server.clients == server.max_clients
    # Repeatable: the next newcomer evicts the next idlest hog, not the operator,
    # who was active more recently.
    second = await connect(nursery, server)
    assert (await second.call("echo", {"text": "again"}))["result"] == {"text": "again"}
    assert await hogs[1].closed()
    assert (await operator.call("echo", {"text": "still"}))["result"] == {"text": "still"}


async def test_subscribers_cannot_take_every_slot(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, bus = make_server(max_clients=4, max_subscribers=3)
    subs = []
    for _ in range(3):
        c = await connect(nursery, server)
        assert (await c.call("stream"))["result"] == {"subscribed": True}
        subs.append(c)
    fourth = await connect(nursery, server)
    refused = await fourth.call("stream")
    assert refused["error"]["code"] == TOO_BUSY and "subscribing connections" in refused["error"]["message"]
    await trio.sleep(1)
    # All four slots are taken, but the one without a subscription is evictable.
    operator = await connect(nursery, server)
    assert (await operator.call("echo", {"text": "ok"}))["result"] == {"text": "ok"}
    assert await fourth.closed()
    bus.publish(SessionOpened("bob", "prosumer", "memory"))
    for c in subs:  # subscribers keep their stream
        assert (await c.read())["params"]["member"] == "bob"
    # A connection that already subscribes may add subscriptions (up to 4 each).
    assert (await subs[0].call("stream", id=2))["result"] == {"subscribed": True}


async def test_busy_clients_are_not_evicted(nursery: trio.Nursery) -> None:
    server, _ = make_server(max_clients=2)
    blocker = trio.Event()

    async def wait() -> str:
        await blocker.wait()
        return "done"

    server.register("wait", wait)
    busy = [await connect(nursery, server) for _ in range(2)]
    for c in busy:
        await c.request("wait")
    await trio.testing.wait_all_tasks_blocked()
    late = await connect(nursery, server)
    reply = await late.read()
    assert reply["error"]["code"] == TOO_BUSY
    blocker.set()
    assert [(await c.read())["result"] for c in busy] == ["done", "done"]


# --- 6: request lines over the limit: one error each, and the connection goes on -------------


def _line(size: int) -> bytes:
    """A complete request line of ``size`` bytes (newline included)."""
    head = b'{"jsonrpc":"2.0","id":7,"method":"echo","params":{"text":"'
    tail = b'"}}\n'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("size", [int(1.06 * MAX_REQUEST), int(1.5 * MAX_REQUEST), 5 * MAX_REQUEST])
async def test_any_oversized_line_gets_one_error_and_the_connection_goes_on(
    nursery: trio.Nursery, size: int
) -> None:
    server, _ = make_server()  # the daemon's 1 MiB limit
    c = await connect(nursery, server)
    line = _line(size)
    for i in range(0, len(line), READ_CHUNK):  # as a socket delivers it
        await c.send(line[i : i + READ_CHUNK])
    reply = await c.read()
    assert reply["error"]["code"] == REQUEST_TOO_LARGE and reply["error"]["data"] == {"limit": MAX_REQUEST}
    assert (await c.call("echo", {"text": "next"}, id=8)) == {"jsonrpc": "2.0", "id": 8,
                                                             "result": {"text": "next"}}


async def test_a_line_at_the_limit_is_served(nursery: trio.Nursery) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    await c.send(_line(MAX_REQUEST + 1))  # MAX_REQUEST bytes before the newline
    assert (await c.read())["result"]["text"].startswith("xxx")


async def test_an_oversized_line_split_mid_newline_search_is_skipped_to_its_end(nursery: trio.Nursery) -> None:
    server, _ = make_server(max_request=1000)
    c = await connect(nursery, server)
    await c.send(b"y" * 1500)  # past the limit, no newline yet: answered at once
    assert (await c.read())["error"]["code"] == REQUEST_TOO_LARGE
    # The rest of that line, then a good request in the same chunk.
    await c.send(b"y" * 3000 + b'\n{"jsonrpc":"2.0","id":3,"method":"echo","params":{"text":"a"}}\n')
    assert (await c.read()) == {"jsonrpc": "2.0", "id": 3, "result": {"text": "a"}}


# --- 6: request ids ------------------------------------------------------------------------


@pytest.mark.parametrize("rid", [1.5, -2.25, 1e300, 0.0])
async def test_any_json_number_is_a_request_id(nursery: trio.Nursery, rid: float) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    await c.send(b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"method":"echo","params":["a"]}\n')
    reply = await c.read()
    assert reply == {"jsonrpc": "2.0", "id": rid, "result": {"text": "a"}}


# --- 6: events.subscribe takes known event names only -----------------------------------------


@asynccontextmanager
async def running_daemon() -> AsyncIterator[DaemonContext]:
    """``run_daemon`` in-process with no components, a memory store and no meter."""
    from p2pd.config import load_config
    from p2pd.daemon import run_daemon
    from protocol import SigningKey

    issuer = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="p2pdo", dir="/tmp") as tmp:
        home = Path(tmp)
        write_member(home / "state" / "keys", issuer, community="c", member_id="alice", metering_point="EAN1")
        (home / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "warning"
[community]
id = "c"
issuers = ["{issuer.public.hex()}"]
[p2p]
host = "127.0.0.1"
port = 0
[store]
url = "memory://"
[meter]
driver = "none"
""")
        async with trio.open_nursery() as nursery:
            config = load_config(home / "p2pd.toml", sections=())
            ctx = await nursery.start(partial(run_daemon, components=[]), config)
            try:
                yield ctx
            finally:
                ctx.stop()


BAD_EVENTS = [
    ([1], "events[0] must be a string, got a number"),
    ([None], "events[0] must be a string, got null"),
    (["session_open", ["session_closed"]], "events[1] must be a string, got an array"),
    ([{"a": 1}], "events[0] must be a string, got an object"),
    (["session_open", "no_such_event"], "events[1]: unknown event 'no_such_event'"),
    (["x" * 500], "events[0]: unknown event 'xxxxxxxx"),
    ([], "events must list at least one event"),
]


async def test_events_subscribe_refuses_what_is_not_an_event_name(nursery: trio.Nursery) -> None:
    async with running_daemon() as ctx:
        c = await connect(nursery, ctx.control)
        for events, message in BAD_EVENTS:
            reply = await c.call("events.subscribe", {"events": events})
            assert reply["error"]["code"] == INVALID_PARAMS, (events, reply)
            assert message in reply["error"]["message"] and len(reply["error"]["message"]) < 600, reply
        # Every known name is accepted, and only those are streamed.
        names = sorted(EVENT_TYPES)
        reply = await c.call("events.subscribe", {"events": names}, id=2)
        assert reply == {"jsonrpc": "2.0", "id": 2, "result": {"subscribed": names}}
        ctx.node.events.publish(SessionOpened("bob", "prosumer", "memory"))
        assert (await c.read())["params"]["event"] == "session_open"


def test_the_docs_list_every_event_name() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "control-api.md").read_text()
    section = doc.split("### events.subscribe", 1)[1].split("###", 1)[0]
    missing = [name for name in EVENT_TYPES if f"`{name}`" not in section]
    assert not missing, missing
