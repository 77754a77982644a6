"""The control API: JSON-RPC 2.0 over a Unix stream socket (docs/control-api.md).

Framing: one JSON value per line, in both directions (newline-delimited, as
accepted by ``socat - UNIX-CONNECT:/run/p2pd/control.sock``). A line is a
request object, a notification (no ``id``) or a batch array.

Other modules add methods with :meth:`ControlServer.register`::

    server.register("orders.list", list_orders, {"limit": Param(int, required=False, default=50, lo=1, hi=1000)})

The handler is called with the validated params as keyword arguments and may
be sync or async; its return value (JSON-ready, or bytes/Path/dataclass/enum,
converted here) is the result. Raise :class:`RpcError` for a specific error
code, or any :class:`~p2pd.errors.P2pdError` (mapped in :data:`ERROR_CODES`).

Hostile clients: a line over ``max_request`` bytes gets one error and is
skipped up to its newline without being buffered (complete or not, the
connection goes on), each client has at most ``max_inflight`` requests running
(reading pauses beyond that), idle clients are dropped, and clients that
``peer_allowed`` rejects get one error and are disconnected. When all ``max_clients`` slots are taken, a newcomer evicts the
client idle for longest (nothing running, nothing subscribed), so clients that
connect and sit idle cannot lock the operator out; at most
``max_subscribers`` connections may hold subscriptions, so that some slots
always stay evictable. None of this affects other clients.

Access (issue 13): the socket is mode 0660, so only its owner, its group and
root can connect; the daemon then checks the connecting process with
SO_PEERCRED (:func:`default_peer_allowed`): its own uid, root, and members of
the socket's group (the daemon's group, ``p2pd`` under systemd) in the
system's group database. A process that still holds the group after its user
left it can open the socket but is refused.

Containment (issue 17): an unexpected exception while handling a request --
a handler's bug, a result that cannot be encoded, a bug here -- answers that
request with -32603 (the exception's type name, never its traceback), is
logged once with its traceback (``control_method_failed``) and counted in
``ControlServer.counters["control_internal_errors"]``; the client's other
requests, the other clients and the daemon go on. Requests are strict JSON:
``NaN``, ``Infinity`` and numbers that overflow a float are parse errors, and
no reply ever holds them.
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from p2pd import log
from p2pd.control.jsonrpc import (
    ERROR_CODES,
    INTERNAL_ERROR,
    INTERNAL_ERRORS,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON_TYPES,
    MAX_BATCH,
    MAX_REQUEST,
    MAX_SUBSCRIPTIONS,
    METHOD_NOT_FOUND,
    PERMISSION_DENIED,
    READ_CHUNK,
    REQUEST_TOO_LARGE,
    SHOW_CHARS,
    TOO_BUSY,
    Handler,
    Method,
    Param,
    RpcError,
    cut,
    decode,
    encode,
)
from p2pd.control.unix import PeerCred as PeerCred
from p2pd.control.unix import (
    bind_socket,
    group_name,
    peer_credentials,
    remove_socket,
)
from p2pd.control.unix import default_peer_allowed as default_peer_allowed
from p2pd.control.unix import in_group as in_group

# Users of the server import these from here (one place), wherever they live.
__all__ = [
    "ERROR_CODES", "INTERNAL_ERROR", "INVALID_PARAMS", "ControlServer", "Param", "PeerCred", "RpcError",
    "Subscription", "default_peer_allowed", "in_group", "serve_control",
]


class Subscription:
    """Passed as first argument to streaming handlers.

    The handler calls :meth:`respond` once (the response to the request),
    then :meth:`notify` as often as it likes; it is cancelled when the client
    disconnects. Returning without responding responds with the return value.
    """

    def __init__(self, client: _Client, request_id: Any) -> None:
        self._client = client
        self._id = request_id
        self.responded = False

    async def respond(self, result: Any) -> None:
        if not self.responded:
            self.responded = True
            await self._client.send({"jsonrpc": "2.0", "id": self._id, "result": result})

    async def notify(self, method: str, params: Any) -> None:
        await self._client.send({"jsonrpc": "2.0", "method": method, "params": params})


class ControlServer:
    """A method registry plus the per-client JSON-RPC loop."""

    def __init__(
        self,
        *,
        max_request: int = MAX_REQUEST,
        max_clients: int = 32,
        max_subscribers: int = 24,
        max_inflight: int = 8,
        idle_timeout: float = 300.0,
        send_timeout: float = 10.0,
        peer_allowed: Callable[[PeerCred, int | None], bool] = default_peer_allowed,
        counters: Counter[str] | None = None,
    ) -> None:
        """``counters``: where to count :data:`INTERNAL_ERRORS` (the daemon
        passes the node's, so ``p2pctl status`` shows them); a new Counter
        if None. ``peer_allowed(peer, socket_group)`` decides who may use the
        socket; it runs in a worker thread (group look-ups may block)."""
        self.methods: dict[str, Method] = {}
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.max_request = max_request
        self.max_clients = max_clients
        self.max_subscribers = max_subscribers
        self.max_inflight = max_inflight
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.peer_allowed = peer_allowed
        self._clients: set[_Client] = set()
        self.register("rpc.methods", self._list_methods, summary="list the methods and their params")

    def register(
        self,
        name: str,
        func: Handler,
        params: Mapping[str, Param] | None = None,
        *,
        streaming: bool = False,
        summary: str = "",
    ) -> None:
        """Add method ``name``; raises ValueError if it exists already.

        ``func(**params)`` (or ``func(subscription, **params)`` if
        ``streaming``) is called with validated params; see the module
        docstring. Positional (array) params map onto ``params`` in order.
        """
        if name in self.methods:
            raise ValueError(f"control method {name!r} registered twice")
        self.methods[name] = Method(name, func, dict(params or {}), streaming,
                                    summary or (inspect.getdoc(func) or "").split("\n")[0])

    @property
    def clients(self) -> int:
        """Connections being served (evicted ones still closing included)."""
        return len(self._clients)

    def subscribers(self) -> int:
        """Connections holding at least one subscription."""
        return sum(1 for c in self._clients if c.subscriptions)

    def _make_room(self) -> bool:
        """True if a newcomer may be served: a slot is free, or the client
        idle for longest (nothing running or subscribed) was evicted for it."""
        live = [c for c in self._clients if not c.evicted]
        if len(live) < self.max_clients:
            return True
        idle = [c for c in live if c.busy == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        victim.evict()
        return True

    def internal_error(self, exc: BaseException, **fields: Any) -> RpcError:
        """Log ``exc`` with its traceback, count it; returns the -32603 error to answer with."""
        self.counters[INTERNAL_ERRORS] += 1
        log.exception("control_method_failed", exc, **fields)
        return RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def _list_methods(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "summary": m.summary, "streaming": m.streaming,
             "params": {n: {"type": [JSON_TYPES.get(t, t.__name__) for t in
                                     (p.type if isinstance(p.type, tuple) else (p.type,))],
                            "required": p.required, "help": p.help} for n, p in m.params.items()}}
            for m in sorted(self.methods.values(), key=lambda m: m.name)
        ]

    def bind_params(self, method: Method, params: Any) -> dict[str, Any]:
        """Validate ``params`` against ``method``; raises RpcError(INVALID_PARAMS)."""
        if params is None:
            params = {}
        if isinstance(params, list):
            if len(params) > len(method.params):
                raise RpcError(INVALID_PARAMS, f"invalid params: {method.name} takes at most {len(method.params)}")
            params = dict(zip(method.params, params, strict=False))  # fewer is fine: defaults
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "invalid params: params must be an object or an array")
        for key in params:
            if key not in method.params:
                raise RpcError(INVALID_PARAMS, f"invalid params: unknown parameter {cut(key)} for {method.name}")
        bound: dict[str, Any] = {}
        for name, spec in method.params.items():
            if name in params:
                bound[name] = spec.check(name, params[name])
            elif spec.required:
                raise RpcError(INVALID_PARAMS, f"invalid params: {name} is required")
            else:
                bound[name] = spec.default
        return bound

    async def call(self, method_name: str, params: Any = None) -> Any:
        """Call a non-streaming method in-process (tests, components)."""
        method = self.methods.get(method_name)
        if method is None or method.streaming:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method_name}")
        return await _invoke(method.func, self.bind_params(method, params))

    async def serve_client(self, stream: trio.abc.Stream, peer: PeerCred | None = None,
                           group: int | None = None) -> None:
        """Serve one client until it disconnects, idles out or misbehaves.

        ``peer`` is the connecting process (None if unknown, e.g. a memory
        stream: then no check); ``group`` the socket's group id. Never raises
        for the client's behaviour; closes ``stream``.
        """
        client = _Client(self, stream)
        try:
            if peer is not None and not await trio.to_thread.run_sync(self.peer_allowed, peer, group):
                log.warning("control_refused", uid=peer.uid, gid=peer.gid, pid=peer.pid, group=group,
                            reason="not the daemon's user, root or a member of the socket's group")
                who = "" if group is None else (f" (add the user to group "
                                                 f"{await trio.to_thread.run_sync(group_name, group)} "
                                                 f"and log in again)")
                await client.send_error(None, RpcError(
                    PERMISSION_DENIED, f"permission denied: uid {peer.uid} may not use this socket{who}"))
                await _drain(stream)
                return
            if not self._make_room():
                await client.send_error(None, RpcError(TOO_BUSY, f"too many control clients (limit {self.max_clients}), all busy"))
                return
            self._clients.add(client)
            try:
                await client.run()
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the server
                self.internal_error(exc, where="client")
            finally:
                self._clients.discard(client)
        finally:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await stream.aclose()


async def _invoke(func: Handler, kwargs: dict[str, Any], *args: Any) -> Any:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _error_for(exc: Exception) -> RpcError | None:
    """The error a handler meant to answer with; None for a bug (internal error)."""
    if isinstance(exc, RpcError):
        return None if exc.code == INTERNAL_ERROR else exc
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return RpcError(code, str(exc))
    return None


class _Client:
    """State of one connection: send lock, in-flight slots, open subscriptions."""

    def __init__(self, server: ControlServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self._send_lock = trio.Lock()
        self._slots = trio.Semaphore(server.max_inflight)
        self._cancel = trio.CancelScope()
        self.subscriptions = 0
        self.busy = 0
        self.evicted = False
        self.last_active = trio.current_time()
        self._finished = trio.lowlevel.ParkingLot()

    def evict(self) -> None:
        """Close this (idle) connection to make room for a newcomer."""
        self.evicted = True
        log.info("control_client_evicted", reason="slots full, idle longest")
        self._cancel.cancel()  # works before run() entered the scope too

    async def send(self, obj: Any) -> None:
        data = encode(obj)
        async with self._send_lock:
            with trio.move_on_after(self.server.send_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._cancel.cancel()
            if scope.cancelled_caught:
                log.info("control_client_dropped", reason="not reading")
                self._cancel.cancel()

    async def send_error(self, request_id: Any, err: RpcError) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "error": err.to_json()})

    async def run(self) -> None:
        limit = self.server.max_request
        buf = bytearray()
        # Skipping the rest of an oversized line: its bytes are dropped, not
        # buffered, until its newline; then the connection goes on.
        skipping = False
        with self._cancel:
            async with trio.open_nursery() as nursery:
                while True:
                    chunk: bytes | bytearray | None = None
                    with trio.move_on_after(self.server.idle_timeout):
                        try:
                            chunk = await self.stream.receive_some(READ_CHUNK)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            chunk = b""
                    if chunk is None:
                        # Idle means nothing sent, nothing running, nothing subscribed.
                        if self.busy == 0 and self.subscriptions == 0:
                            log.info("control_client_idle", timeout=self.server.idle_timeout)
                            break
                        continue
                    if not chunk:
                        # The client half-closed (``echo ... | socat``): finish
                        # what it asked for, but end its subscriptions.
                        with trio.move_on_after(self.server.idle_timeout):
                            while self.busy > self.subscriptions:
                                await self._finished.park()
                        break
                    self.last_active = trio.current_time()
                    buf += chunk
                    # Bounded: each pass removes a line or ends the loop.
                    while True:
                        end = buf.find(b"\n")
                        if skipping:
                            if end < 0:
                                buf.clear()
                                break
                            del buf[: end + 1]
                            skipping = False
                            continue
                        if end < 0:
                            if len(buf) > limit:
                                # Answer now, without waiting for (or keeping) the rest.
                                await self.send_error(None, _too_large(limit))
                                buf.clear()
                                skipping = True
                            break
                        line = bytes(buf[:end])
                        del buf[: end + 1]
                        if len(line) > limit:
                            await self.send_error(None, _too_large(limit))
                            continue
                        if line.strip():
                            await self._slots.acquire()  # backpressure: stop reading when full
                            self.busy += 1
                            nursery.start_soon(self._handle_line, line, _Slot(self._slots))
                nursery.cancel_scope.cancel()

    async def _handle_line(self, line: bytes, slot: _Slot) -> None:
        try:
            try:
                request = decode(line)
            except RpcError as err:
                await self.send_error(None, err)
                return
            try:
                if isinstance(request, list):
                    await self._handle_batch(request)
                    return
                response = await self._handle_one(request, slot)
                if response is not None:
                    await self.send(response)
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the connection
                # _handle_one answers its own failures; this is one outside it
                # (e.g. an error whose data cannot be encoded). The id may be
                # unknown: answer with null, as for an unreadable request.
                await self.send_error(None, self.server.internal_error(exc, where="request"))
        finally:
            self.busy -= 1
            self.last_active = trio.current_time()
            slot.release()
            self._finished.unpark_all()

    async def _handle_batch(self, batch: list[Any]) -> None:
        if not batch or len(batch) > MAX_BATCH:
            msg = "invalid request: empty batch" if not batch else f"invalid request: batch larger than {MAX_BATCH}"
            await self.send_error(None, RpcError(INVALID_REQUEST, msg))
            return
        responses = []
        for item in batch:
            response = await self._handle_one(item, None)
            if response is not None:
                responses.append(response)
        if responses:
            await self.send(responses)

    async def _handle_one(self, request: Any, slot: _Slot | None) -> Any:
        """Run one request; returns the response (None for notifications and streams).

        ``slot`` is the in-flight slot of a lone request (None inside a batch,
        where streaming is not allowed).
        """
        request_id = request.get("id") if isinstance(request, dict) else None
        # JSON-RPC 2.0: a string, a number (1.5 too; decode() refused NaN) or null.
        if not isinstance(request_id, (str, int, float, type(None))) or isinstance(request_id, bool):
            return _err(None, RpcError(INVALID_REQUEST, "invalid request: id must be a string, number or null"))
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("method"), str)
            or set(request) - {"jsonrpc", "id", "method", "params"}
        ):
            return _err(request_id, RpcError(INVALID_REQUEST, "invalid request: expected "
                                             '{"jsonrpc": "2.0", "method": ..., "params": ..., "id": ...}'))
        is_notification = "id" not in request
        name = request["method"]
        method = self.server.methods.get(name)
        try:
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {name[:SHOW_CHARS]}")
            kwargs = self.server.bind_params(method, request.get("params"))
            if method.streaming:
                if slot is None or is_notification:
                    raise RpcError(INVALID_REQUEST, f"invalid request: {name} streams; call it alone and with an id")
                if self.subscriptions >= MAX_SUBSCRIPTIONS:
                    raise RpcError(TOO_BUSY, f"too many subscriptions on this connection (limit {MAX_SUBSCRIPTIONS})")
                if not self.subscriptions and self.server.subscribers() >= self.server.max_subscribers:
                    # The other slots stay evictable, so an operator always gets in.
                    raise RpcError(TOO_BUSY, f"too many subscribing connections (limit {self.server.max_subscribers})")
                slot.release()  # a long-lived stream must not block ordinary requests
                sub = Subscription(self, request_id)
                self.subscriptions += 1
                try:
                    result = await _invoke(method.func, kwargs, sub)
                    encode(result)
                    await sub.respond(result)
                except Exception as exc:  # noqa: BLE001
                    if sub.responded:  # too late for an error response: log, count, end the stream
                        self.server.internal_error(exc, method=name, where="stream")
                        return None
                    raise
                finally:
                    self.subscriptions -= 1
                return None
            result = await _invoke(method.func, kwargs)
            encode(result)  # a result we cannot serialise is our bug: report it as one
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
            err = _error_for(exc)
            if err is None:
                err = self.server.internal_error(exc, method=name)
            else:
                try:
                    encode(err.to_json())
                except (TypeError, ValueError, RecursionError) as bad:
                    err = self.server.internal_error(bad, method=name, where="error data")
            return None if is_notification else _err(request_id, err)
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


class _Slot:
    """One of a client's in-flight slots; release() is idempotent."""

    def __init__(self, sem: trio.Semaphore) -> None:
        self._sem = sem
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._sem.release()


async def _drain(stream: trio.abc.Stream, limit: int = READ_CHUNK, seconds: float = 1.0) -> None:
    """Read and drop what a refused client already sent (a little, briefly):
    closing with its request unread would reset the connection, and the
    client could lose our answer before reading it."""
    with trio.move_on_after(seconds):
        got = 0
        while got < limit:  # bounded by limit
            try:
                chunk = await stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            got += len(chunk)


def _err(request_id: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": err.to_json()}


def _too_large(limit: int) -> RpcError:
    return RpcError(REQUEST_TOO_LARGE, f"request too large (limit {limit} bytes)", {"limit": limit})


# --- the Unix socket ---------------------------------------------------------


async def serve_control(
    server: ControlServer, path: Path, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on the Unix socket ``path`` (mode 0660) and serve clients forever.

    Raises :class:`ConfigError` if the path is unusable, :class:`Unavailable`
    if another daemon holds it. Removes the socket file on exit.
    """
    raw, inode = bind_socket(path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    # Members of the socket's group may use it (mode 0660): the daemon's group,
    # or the directory's if it is set-group-id.
    group = os.stat(path).st_gid
    log.info("control_listening", socket=str(path), group=group_name(group))
    try:
        task_status.started(path)

        async def handler(stream: trio.SocketStream) -> None:
            await server.serve_client(stream, peer_credentials(stream.socket), group)

        await trio.serve_listeners(handler, [listener])
    finally:
        remove_socket(path, inode)


# The two helpers below make a few quick system calls on a local directory;
# they stay synchronous so that the cleanup also runs when cancelled.
