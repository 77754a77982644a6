"""The JSON-RPC control server: framing, errors, hostile clients, streaming."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import tempfile
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from p2pd_test_helpers import eventually, write_member

from p2pd.control.jsonrpc import (
    APP_ERROR,
    INTERNAL_ERRORS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_CONNECTED_CODE,
    PARSE_ERROR,
    PERMISSION_DENIED,
    REQUEST_TOO_LARGE,
)
from p2pd.control.server import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    ControlServer,
    Param,
    PeerCred,
    RpcError,
    Subscription,
    serve_control,
)
from p2pd.errors import NotConnected
from p2pd.events import EventBus, SessionOpened


class Conn:
    """A test client over a memory stream: send lines, read JSON lines."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def send_line(self, data: bytes | str) -> None:
        await self.stream.send_all(data.encode() if isinstance(data, str) else data)

    async def request(self, method: str, params: Any = None, id: Any = 1) -> None:
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            req["params"] = params
        await self.send_line(json.dumps(req) + "\n")

    async def read(self) -> Any:
        with trio.fail_after(30):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method: str, params: Any = None) -> Any:
        await self.request(method, params)
        return await self.read()

    async def closed(self) -> bool:
        with trio.fail_after(300):
            return await self.stream.receive_some(10) == b""


def make_server(**kwargs: Any) -> tuple[ControlServer, EventBus]:
    server = ControlServer(**kwargs)
    bus = EventBus()

    def echo(text: str, times: int) -> dict[str, Any]:
        return {"text": text * times}

    async def slow(seconds: float) -> str:
        await trio.sleep(seconds)
        return "done"

    def missing(member_id: str) -> None:
        raise NotConnected(f"no session with {member_id}")

    def broken() -> None:
        raise RuntimeError("bug")

    async def stream(sub: Subscription) -> None:
        async with bus.subscribe() as rx:
            await sub.respond({"subscribed": True})
            async for ev in rx:
                await sub.notify("event", ev.to_json())

    server.register("echo", echo, {"text": Param(str, max_len=100), "times": Param(int, lo=1, hi=5, required=False, default=1)})
    server.register("slow", slow, {"seconds": Param(float)})
    server.register("missing", missing, {"member_id": Param(str)})
    server.register("broken", broken)
    server.register("stream", stream, streaming=True)
    return server, bus


async def connect(nursery: trio.Nursery, server: ControlServer, uid: int | None = None) -> Conn:
    client, srv = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_client, srv, None if uid is None else PeerCred(1, uid, uid))
    return Conn(client)


async def test_call_and_positional_params(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    assert await c.call("echo", {"text": "ab", "times": 2}) == {"jsonrpc": "2.0", "id": 1, "result": {"text": "abab"}}
    assert (await c.call("echo", ["x"]))["result"] == {"text": "x"}


@pytest.mark.parametrize("line, code", [
    (b"{not json\n", PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": 5}}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a", "times": true}}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a", "times": 9}}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a", "extra": 1}}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo"}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": "text"}\n', INVALID_PARAMS),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "no.such"}\n', METHOD_NOT_FOUND),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "echo"}\n', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": {}, "method": "echo"}\n', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 7}\n', INVALID_REQUEST),
    (b'[]\n', INVALID_REQUEST),
    (b'42\n', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "missing", "params": ["bob"]}\n', NOT_CONNECTED_CODE),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "broken"}\n', -32603),
    (b"[" * 100_000 + b"\n", PARSE_ERROR),
    # Not JSON, though Python's json module reads them (issue 17).
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [NaN]}\n', PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [-Infinity]}\n', PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a", "times": 1e400}}\n', PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ' + b"[" * 300 + b"]" * 300 + b"}\n",
     INVALID_REQUEST),
])
async def test_bad_requests_get_the_right_error_and_the_connection_survives(
    nursery: trio.Nursery, line: bytes, code: int, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    await c.send_line(line)
    reply = await c.read()
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert (await c.call("echo", {"text": "still here"}))["result"] == {"text": "still here"}


async def test_notification_gets_no_answer_and_batches_work(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    await c.send_line('{"jsonrpc": "2.0", "method": "echo", "params": {"text": "n"}}\n')
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a"}},
             {"jsonrpc": "2.0", "method": "echo", "params": {"text": "b"}},
             {"jsonrpc": "2.0", "id": 3, "method": "nope"}]
    await c.send_line(json.dumps(batch) + "\n")
    replies = await c.read()
    assert [r["id"] for r in replies] == [1, 3]
    assert replies[0]["result"] == {"text": "a"} and replies[1]["error"]["code"] == METHOD_NOT_FOUND


async def test_huge_request_is_refused_before_it_is_buffered(nursery: trio.Nursery) -> None:
    server, _ = make_server(max_request=1000)
    other = await connect(nursery, server)
    c = await connect(nursery, server)
    # A complete but oversized line: refused, and the connection goes on.
    await c.send_line(b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "' + b"x" * 2000 + b'"}}\n')
    assert (await c.read())["error"]["code"] == REQUEST_TOO_LARGE
    assert "result" in await c.call("echo", {"text": "ok"})
    # A line with no end in sight: refused once the limit is passed; its bytes
    # are dropped as they come, and its newline ends it like any other.
    for _ in range(20):
        await c.send_line(b"x" * 70_000)
    reply = await c.read()
    assert reply["error"]["code"] == REQUEST_TOO_LARGE and reply["error"]["data"] == {"limit": 1000}
    await c.send_line(b"x\n")
    assert "result" in await c.call("echo", {"text": "after"})
    assert "result" in await other.call("echo", {"text": "unaffected"})


async def test_foreign_uid_is_refused(nursery: trio.Nursery) -> None:
    server, _ = make_server(peer_allowed=lambda peer, group: peer.uid == 1000)
    bad = await connect(nursery, server, uid=4242)
    reply = await bad.read()
    assert reply["error"]["code"] == PERMISSION_DENIED and "4242" in reply["error"]["message"]
    await bad.stream.send_eof()  # the server reads what a refused client sent until it ends
    assert await bad.closed()
    good = await connect(nursery, server, uid=1000)
    assert "result" in await good.call("echo", {"text": "hi"})


async def test_concurrent_requests_are_capped_per_client(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server(max_inflight=2)
    c = await connect(nursery, server)
    start = trio.current_time()
    for i in range(4):
        await c.request("slow", {"seconds": 10}, id=i)
    ids = [(await c.read())["id"] for _ in range(4)]
    assert sorted(ids) == [0, 1, 2, 3]
    # Two at a time: 4 requests of 10 s take 20 s.
    assert trio.current_time() - start == pytest.approx(20, abs=0.5)


async def test_idle_client_is_dropped_but_a_subscriber_is_not(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, bus = make_server(idle_timeout=60)
    idle = await connect(nursery, server)
    sub = await connect(nursery, server)
    assert (await sub.call("stream"))["result"] == {"subscribed": True}
    start = trio.current_time()
    assert await idle.closed()
    assert trio.current_time() - start == pytest.approx(60, abs=1)
    await trio.sleep(600)
    bus.publish(SessionOpened("bob", "prosumer", "memory"))
    assert await sub.read() == {"jsonrpc": "2.0", "method": "event",
                                "params": {"event": "session_open", "member": "bob", "role": "prosumer",
                                           "address": "memory"}}


async def test_subscription_ends_when_client_disconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, bus = make_server()
    c = await connect(nursery, server)
    await c.call("stream")
    assert len(bus._subscribers) == 1
    await c.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert not bus._subscribers and not server.clients


async def test_half_closed_client_still_gets_its_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = make_server()
    client, srv = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_client, srv, None)
    await client.send_all(b'{"jsonrpc": "2.0", "id": 9, "method": "slow", "params": {"seconds": 0.01}}\n')
    await client.send_stream.aclose()  # like `echo ... | socat`
    c = Conn(client)
    assert (await c.read())["result"] == "done"


def test_register_rejects_duplicates_and_call_works() -> None:
    server, _ = make_server()
    with pytest.raises(ValueError):
        server.register("echo", lambda: None)
    assert trio.run(server.call, "echo", {"text": "z"}) == {"text": "z"}
    with pytest.raises(RpcError):
        trio.run(server.call, "nope")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="p2pd", dir="/tmp") as d:
        yield Path(d)


async def test_unix_socket_is_group_only_checks_peer_uid_and_cleans_up(
    nursery: trio.Nursery, short_dir: Path
) -> None:
    path = short_dir / "control.sock"
    seen: list[int] = []

    groups: list[int | None] = []

    def peer_allowed(peer: PeerCred, group: int | None) -> bool:
        seen.append(peer.uid)
        groups.append(group)
        return peer.uid != os.getuid()

    server, _ = make_server(peer_allowed=peer_allowed)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_control(server, path, task_status=task_status)

    await nursery.start(run)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    stream = await trio.open_unix_socket(str(path))
    reply = await Conn(stream).read()
    assert seen == [os.getuid()]  # SO_PEERCRED gave our own uid ...
    assert groups == [path.stat().st_gid]  # ... and the check gets the socket's group
    assert reply["error"]["code"] == PERMISSION_DENIED  # ... which this server was told to refuse
    await stream.aclose()
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not path.exists()


async def test_stale_socket_is_replaced_but_a_live_one_is_not(nursery: trio.Nursery, short_dir: Path) -> None:
    from p2pd.errors import P2pdError

    path = short_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # file remains, nobody listens
    server, _ = make_server()
    await nursery.start(serve_control, server, path)
    with pytest.raises(P2pdError, match="another daemon"):
        await serve_control(server, path)
    (short_dir / "file").write_text("x")
    with pytest.raises(P2pdError, match="not a socket"):
        await serve_control(server, short_dir / "file")


# --- issue 17: an unexpected exception answers -32603, is logged and counted, and nothing else stops


@pytest.fixture
def p2pd_log() -> Iterator[list[str]]:
    """The "p2pd" logger's lines, also after an in-process daemon's
    log.setup() has turned propagation (to pytest's handler) off."""
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    logger, handler = logging.getLogger("p2pd"), Handler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def faulty_server(counters: Counter[str] | None = None) -> ControlServer:
    server, _ = make_server(counters=counters)

    def divide() -> float:
        return 1 / 0

    def bad_data() -> None:
        raise RpcError(APP_ERROR, "has data JSON cannot hold", data=object())

    server.register("divide", divide)
    server.register("nan", lambda: float("nan"))
    server.register("bad_data", bad_data)
    return server


async def test_injected_fault_answers_internal_error_and_everyone_goes_on(
    nursery: trio.Nursery, p2pd_log: list[str]
) -> None:
    counters: Counter[str] = Counter()
    server = faulty_server(counters)
    c = await connect(nursery, server)
    other = await connect(nursery, server)
    reply = await c.call("divide")
    assert reply == {"jsonrpc": "2.0", "id": 1,
                     "error": {"code": INTERNAL_ERROR, "message": "internal error: ZeroDivisionError"}}
    assert counters[INTERNAL_ERRORS] == 1 and server.counters is counters
    (line,) = [ln for ln in p2pd_log if "control_method_failed" in ln]
    assert line.startswith("ERROR ") and "method=divide" in line and "\n" not in line
    assert "traceback=" in line and "1 / 0" in line  # the traceback, in the log only
    # The same client and another one go on.
    assert (await c.call("echo", {"text": "same"}))["result"] == {"text": "same"}
    assert (await other.call("echo", {"text": "other"}))["result"] == {"text": "other"}
    # A notification gets no answer, but the bug is still logged and counted.
    await c.send_line('{"jsonrpc": "2.0", "method": "divide"}\n')
    assert (await c.call("echo", {"text": "after"}))["result"] == {"text": "after"}
    assert counters[INTERNAL_ERRORS] == 2


@pytest.mark.parametrize("method", ["nan", "bad_data"])
async def test_a_reply_json_cannot_hold_is_an_internal_error(nursery: trio.Nursery, method: str) -> None:
    # Before issue 17, "nan" was answered with a bare NaN (not JSON) and
    # "bad_data" broke the connection: its error could not be encoded.
    server = faulty_server()
    c = await connect(nursery, server)
    reply = await c.call(method)
    assert reply["error"]["code"] == INTERNAL_ERROR and server.counters[INTERNAL_ERRORS] == 1
    assert (await c.call("echo", {"text": "ok"}))["result"] == {"text": "ok"}


async def test_a_stream_failing_after_its_response_is_logged_and_counted(
    nursery: trio.Nursery, p2pd_log: list[str]
) -> None:
    server, _ = make_server()

    async def flaky(sub: Subscription) -> None:
        await sub.respond({"subscribed": True})
        raise KeyError("bug")

    server.register("flaky", flaky, streaming=True)
    c = await connect(nursery, server)
    assert (await c.call("flaky"))["result"] == {"subscribed": True}
    assert (await c.call("echo", {"text": "ok"}))["result"] == {"text": "ok"}
    assert server.counters[INTERNAL_ERRORS] == 1
    assert any("control_method_failed" in ln and "where=stream" in ln for ln in p2pd_log)


async def test_error_messages_quote_little_of_the_request(nursery: trio.Nursery) -> None:
    server, _ = make_server()
    c = await connect(nursery, server)
    for params in ({"text": "a", "x" * 5000: 1}, None):
        method = "echo" if params else "m" * 5000
        reply = await c.call(method, params)
        assert len(reply["error"]["message"]) < 200, reply


async def test_status_counts_internal_errors_in_a_running_daemon(
    p2pd_log: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pd.cli import ctl
    from p2pd.config import load_config
    from p2pd.daemon import run_daemon
    from protocol import SigningKey

    issuer = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="p2pdc", dir="/tmp") as tmp:
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
            ctx.control.register("test.divide", lambda: 1 / 0)
            sock = str(ctx.config.node.control_socket)

            def over_the_socket() -> tuple[int, int]:
                with ctl.Client(sock, timeout=30) as client:
                    with pytest.raises(ctl.RpcFailure) as info:
                        client.call("test.divide")
                    return info.value.code, ctl.main(["--socket", sock, "status"])

            error_code, exit_code = await trio.to_thread.run_sync(over_the_socket)
            ctx.stop()
    assert error_code == INTERNAL_ERROR and exit_code == 0
    assert f"{INTERNAL_ERRORS}=1" in capsys.readouterr().out


async def test_a_meter_reading_that_raises_is_counted_and_the_daemon_goes_on(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 17, containment: an exception a driver failed to turn into BadReading
    # ended the poll task in the daemon's nursery, so a bad telegram stopped the node.
    import meter_drivers
    from p2pd.config import load_config
    from p2pd.daemon import run_daemon
    from protocol import SigningKey

    class Broken:
        reads = 0

        async def read(self) -> Any:
            Broken.reads += 1
            await trio.lowlevel.checkpoint()
            raise ZeroDivisionError("a driver bug")

        async def aclose(self) -> None:
            return None

    monkeypatch.setattr(meter_drivers, "create_driver", lambda name, options: Broken())
    issuer = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="p2pdm", dir="/tmp") as tmp:
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
driver = "simulated"
interval = 0.1
""")
        async with trio.open_nursery() as nursery:
            config = load_config(home / "p2pd.toml", sections=())
            ctx = await nursery.start(partial(run_daemon, components=[]), config)
            await eventually(lambda: ctx.node.counters["meter_faults"] >= 3, within=10)
            assert (await ctx.control.call("status"))["member_id"] == "alice"  # still serving
            ctx.stop()
    assert Broken.reads >= 3
    # The first fault is logged with its traceback; the next ones only every 100th (counted).
    faults = [line for line in capfd.readouterr().err.splitlines() if "event=meter_fault" in line]
    assert len(faults) == 1 and "traceback=" in faults[0] and "ZeroDivisionError" in faults[0]
