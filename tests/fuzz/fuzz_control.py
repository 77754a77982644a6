"""Target: one client's byte stream through ``ControlServer.serve_client``.

The bytes are what a client writes to the control socket before it
half-closes; the server (small limits, a few test methods) answers over a
memory stream, under trio's mock clock so idle and send timeouts cost nothing.

Documented outcome: ``serve_client`` returns (it "never raises for the
client's behaviour") and every line it writes is strict JSON (no NaN) holding
one JSON-RPC 2.0 response, a batch of them, or a notification of the
streaming method, with short error messages. The only internal error
(-32603) allowed is the one the ``fail`` method causes on purpose, and nothing
else may be logged at error level: any other is the server's bug showing.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pd.control.server import INTERNAL_ERROR, ControlServer, Param, Subscription

MAX_MESSAGE = 300
SMOKE_INPUTS = 1500  # each input is a trio.run: slower than the decoders


class _Failure(Exception):
    """Raised by the ``fail`` method: the injected fault."""


def _server() -> ControlServer:
    server = ControlServer(max_request=512, max_inflight=2, idle_timeout=30.0, send_timeout=5.0)

    def echo(value: Any) -> Any:
        return value

    def add(a: int, b: int = 0) -> int:
        return a + b

    def status() -> dict[str, Any]:
        # Values encode() converts: bytes, Path, tuples and sets.
        return {"member_id": "alice", "key": b"\x01\x02", "socket": Path("/run/p2pd/control.sock"),
                "listen": ("127.0.0.1:7400",), "roles": frozenset({"prosumer"})}

    def fail() -> None:
        raise _Failure("injected fault")

    async def slow(seconds: float) -> str:
        await trio.sleep(seconds)
        return "done"

    async def stream(sub: Subscription, events: list[Any] | None) -> None:
        await sub.respond({"subscribed": events or "all"})
        await sub.notify("event", {"event": "tick", "n": 1})
        await trio.sleep(1)

    server.register("echo", echo, {"value": Param((str, int, float, bool, list, dict, type(None)))})
    server.register("add", add, {"a": Param(int, lo=-1000, hi=1000),
                                 "b": Param(int, required=False, default=0, lo=-1000, hi=1000)})
    server.register("status", status)
    server.register("fail", fail)
    server.register("slow", slow, {"seconds": Param(float, lo=0, hi=600)})
    server.register("events.subscribe", stream,
                    {"events": Param(list, required=False, max_len=8)}, streaming=True)
    return server


class _Errors(logging.Handler):
    """Collects the server's error-level log lines."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_SERVER = _server()
_ERRORS = _Errors()
logging.getLogger("p2pd").addHandler(_ERRORS)


def _strict(name: str) -> Any:
    raise AssertionError(f"reply holds {name}, which is not JSON")


def _check_response(obj: Any) -> None:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise AssertionError(f"not a JSON-RPC 2.0 object: {str(obj)[:200]}")
    if "method" in obj:  # a notification of the streaming method
        if obj["method"] != "event" or set(obj) != {"jsonrpc", "method", "params"}:
            raise AssertionError(f"unexpected notification: {str(obj)[:200]}")
        return
    if "id" not in obj or len({"result", "error"} & set(obj)) != 1 or len(obj) != 3:
        raise AssertionError(f"malformed response: {str(obj)[:200]}")
    err = obj.get("error")
    if err is None:
        return
    if not isinstance(err, dict) or not isinstance(err.get("code"), int) or not isinstance(err.get("message"), str):
        raise AssertionError(f"malformed error: {str(err)[:200]}")
    if len(err["message"]) > MAX_MESSAGE:
        raise AssertionError(f"error message over {MAX_MESSAGE} characters")
    if err["code"] == INTERNAL_ERROR and "_Failure" not in err["message"]:
        raise AssertionError(f"internal error not caused by the fault: {err['message'][:200]}")


def check_output(out: bytes) -> None:
    """Every line the server wrote is a valid reply; raises AssertionError if not."""
    if out and not out.endswith(b"\n"):
        raise AssertionError("output does not end with a newline")
    for line in out.split(b"\n")[:-1]:
        reply = json.loads(line, parse_constant=_strict)
        if isinstance(reply, list):
            if not reply:
                raise AssertionError("empty batch response")
            for item in reply:
                _check_response(item)
        else:
            _check_response(reply)


async def _session(data: bytes) -> bytes:
    client, srv = trio.testing.memory_stream_pair()
    out = bytearray()

    async def write() -> None:
        try:
            await client.send_all(data)
            await client.send_stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server hung up first (a line over the limit)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_SERVER.serve_client, srv, None)
        nursery.start_soon(write)
        while chunk := await client.receive_some(65536):
            out += chunk
    return bytes(out)


def target(data: bytes) -> None:
    _ERRORS.lines.clear()
    out = trio.run(_session, data, clock=trio.testing.MockClock(autojump_threshold=0))
    check_output(out)
    bugs = [line for line in _ERRORS.lines if "_Failure" not in line]
    if bugs:
        raise AssertionError(f"logged as an error: {bugs[0][:300]}")


def _doc_requests() -> list[bytes]:
    """The request lines (``→ {...}``) of docs/control-api.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "control-api.md").read_text(encoding="utf-8")
    return [m.encode() + b"\n" for m in re.findall(r"^→ (\{.*\})$", text, re.M)]


def seeds() -> list[bytes]:
    def req(method: str, params: Any = None, id: Any = 1) -> bytes:
        obj: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            obj["params"] = params
        return json.dumps(obj).encode() + b"\n"

    found = _doc_requests()
    found += [
        req("echo", {"value": "hi"}), req("echo", [[1, 2.5, None, True, {"k": "v"}]], id="x"),
        req("add", [2, 3]), req("add", {"a": 1, "b": 1001}), req("status"), req("rpc.methods"),
        req("fail"), req("slow", {"seconds": 2}), req("events.subscribe", {"events": ["tick"]}),
        req("fail") + req("echo", {"value": 1}, id=2),  # issue 17: the fault, then the same client
        b'{"jsonrpc":"2.0","method":"echo","params":["note"]}\n',
        b'[{"jsonrpc":"2.0","id":1,"method":"add","params":[1]},{"jsonrpc":"2.0","method":"fail"},'
        b'{"jsonrpc":"2.0","id":3,"method":"nope"}]\n',
        b"[]\n", b"42\n", b"{not json\n", b"\n\n", b"[" * 3000 + b"\n", b"x" * 600,
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[NaN]}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1e400]}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"valu' + b"e" * 300 + b'":1}}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[' + b"[" * 400 + b"]" * 400 + b"]}\n",
    ]
    return found
