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

from p2pd.control.server import PEER_UNREACHABLE, ControlServer, Param, RpcError, Subscription
from p2pd.errors import NotConnected, PeerGone
from p2pd.net.listener import dial
from protocol import Reason

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

VERSION = "0.1.0"


def register_builtin_methods(server: ControlServer, ctx: DaemonContext) -> None:
    node = ctx.node

    def status() -> dict[str, Any]:
        """the node: member id, role, community, uptime, sessions, meter health, counters"""
        out = node.status()
        out.update(
            version=VERSION,
            pid=os.getpid(),
            listen=ctx.listen_addresses,
            control_socket=str(ctx.config.node.control_socket),
            meter=ctx.meter_status(),
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
        wanted = None if events is None else {str(e) for e in events}
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
