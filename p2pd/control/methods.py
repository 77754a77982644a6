"""The daemon's built-in control methods: status, peers.*, config.reload, events.subscribe.

Each is registered on a :class:`~p2pd.control.server.ControlServer` by
:func:`register_builtin_methods`; docs/control-api.md shows a request and
response for each. Other modules register theirs the same way from their
daemon component (see p2pd/daemon.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import trio

from p2pd import __version__
from p2pd.control.jsonrpc import (
    PEER_UNREACHABLE,
    SHOW_CHARS,
)
from p2pd.control.server import (
    ERROR_CODES,
    INVALID_PARAMS,
    ControlServer,
    Param,
    RpcError,
    Subscription,
)
from p2pd.errors import NotConnected, P2pdError, PeerGone
from p2pd.events import EVENT_TYPES
from p2pd.net.listener import dial
from protocol import Reason
from store import SqlRepository, StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

VERSION = __version__
STORAGE_UNAVAILABLE = -32009  # docs/control-api.md, "Errors"

if not any(cls is StorageUnavailable for cls, _ in ERROR_CODES):
    # Any method whose store write the disk refused (full, I/O error, read-only).
    ERROR_CODES.insert(0, (StorageUnavailable, STORAGE_UNAVAILABLE))

TEST_HOOKS_ENV = "P2PD_TEST_HOOKS"
"""TEST HOOK switch: with ``P2PD_TEST_HOOKS=1`` in its environment the daemon
also serves the ``test.*`` methods of :func:`register_test_hooks`. Tests set
it; never set it in production (the systemd unit does not)."""


_JSON_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               list: "an array", dict: "an object"}


def event_names(events: list[Any]) -> set[str]:
    """The names ``events.subscribe`` was given, each a known event
    (:data:`p2pd.events.EVENT_TYPES`). Raises RpcError(INVALID_PARAMS) naming
    the first entry that is not, and for an empty list (which would
    subscribe to nothing)."""
    if not events:
        raise RpcError(INVALID_PARAMS, "invalid params: events must list at least one event "
                                       "(leave it out to receive all)")
    for i, name in enumerate(events):
        if not isinstance(name, str):
            kind = _JSON_KINDS.get(type(name), type(name).__name__)
            raise RpcError(INVALID_PARAMS, f"invalid params: events[{i}] must be a string, got {kind}")
        if name not in EVENT_TYPES:
            shown = repr(name) if len(name) <= SHOW_CHARS else repr(name[:SHOW_CHARS]) + "..."
            raise RpcError(INVALID_PARAMS, f"invalid params: events[{i}]: unknown event {shown}; "
                                           f"known: {', '.join(sorted(EVENT_TYPES))}")
    return set(events)


def register_builtin_methods(server: ControlServer, ctx: DaemonContext) -> None:
    node = ctx.node

    def status() -> dict[str, Any]:
        """the node: member id, role, community, uptime, sessions, meter and store health, counters"""
        out = node.status()
        out.update(
            version=VERSION,
            pid=os.getpid(),
            listen=ctx.listen_addresses,
            control_socket=str(ctx.config.node.control_socket),
            meter=ctx.meter_status(),
            store=ctx.store_health.status(),
            discovery=ctx.discovery.status() if ctx.discovery else None,
        )
        return out

    def peers_list() -> dict[str, Any]:
        """live sessions, and the addresses we keep dialling"""
        st = node.status()
        return {
            "sessions": st["sessions"],
            "targets": ctx.discovery.status()["targets"] if ctx.discovery else [],
        }

    async def peers_connect(host: str, port: int) -> dict[str, Any]:
        """dial host:port once and wait for the session"""
        try:
            conn = await dial(node, host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise RpcError(PEER_UNREACHABLE, f"cannot connect to {host}:{port}: "
                                             f"{getattr(exc, 'strerror', None) or exc or 'timed out'}") from exc
        except PeerGone as exc:
            raise RpcError(PEER_UNREACHABLE, str(exc)) from exc
        return {"member_id": conn.member_id, "address": conn.address, "initiator": conn.initiator}

    async def peers_disconnect(member_id: str) -> dict[str, Any]:
        """close the session with a member (static and announced peers are redialled after back-off)"""
        conn = node.sessions.get(member_id)
        if conn is None:
            raise NotConnected(f"no session with {member_id}")
        await conn.close(Reason.NORMAL, "disconnected by the operator")
        with trio.move_on_after(5):
            await conn.finished.wait()
        return {"member_id": member_id, "closed": True}

    async def config_reload() -> dict[str, Any]:
        """re-read the configuration file and apply what can change at run time"""
        return await ctx.reload()

    async def events_subscribe(sub: Subscription, events: list[Any] | None) -> None:
        """stream node events as "event" notifications until the client disconnects"""
        wanted = None if events is None else event_names(events)
        async with node.events.subscribe() as receive:
            await sub.respond({"subscribed": sorted(wanted) if wanted else "all"})
            async for event in receive:
                if wanted is None or event.NAME in wanted:
                    await sub.notify("event", event.to_json())

    server.register("status", status)
    server.register("peers.list", peers_list)
    server.register("peers.connect", peers_connect, {
        "host": Param(str, max_len=253, help="host name or address"),
        "port": Param(int, lo=1, hi=65535),
    })
    server.register("peers.disconnect", peers_disconnect, {"member_id": Param(str, max_len=64)})
    server.register("config.reload", config_reload)
    server.register("events.subscribe", events_subscribe, {
        "events": Param(list, required=False, max_len=64, help="event names to receive (default: all)"),
    }, streaming=True)


def register_test_hooks(server: ControlServer, ctx: DaemonContext) -> None:
    """TEST HOOKS, registered only with ``P2PD_TEST_HOOKS=1`` (see :data:`TEST_HOOKS_ENV`).

    ``test.store_max_pages {pages?: int}`` caps the SQLite store at ``pages``
    pages (0: its current size; absent lifts the cap), so that store writes
    fail exactly as on a full disk (``SqlRepository.limit_pages_for_tests``).
    """

    async def store_max_pages(pages: int | None) -> dict[str, Any]:
        """TEST HOOK: make the SQLite store full at pages (0: now), or lift the cap"""
        repo = ctx.repo
        if not isinstance(repo, SqlRepository):
            raise P2pdError("test.store_max_pages needs a SQL store")
        await trio.to_thread.run_sync(repo.limit_pages_for_tests, pages)
        return {"max_pages": pages}

    server.register("test.store_max_pages", store_max_pages, {
        "pages": Param(int, required=False, lo=0, hi=1 << 32, help="absent: lift the cap")})
