"""TCP listener and dialer for peer connections."""

from __future__ import annotations

import trio

from p2pd import log
from p2pd.node import Node
from p2pd.peer import PeerConnection


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def serve_p2p(
    node: Node, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept peers on ``host:port`` forever; reports the bound listeners."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = [lst.socket.getsockname()[:2] for lst in listeners]
    log.info("listening", addresses=",".join(f"{h}:{p}" for h, p in bound))
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream) -> None:
        await node.accept(stream, _peer_address(stream))

    await trio.serve_listeners(handler, listeners)


async def dial(node: Node, host: str, port: int, *, connect_timeout: float = 10.0) -> PeerConnection:
    """Open a TCP connection to ``host:port`` and establish a session.

    Raises :class:`OSError` if the TCP connection fails and
    :class:`p2pd.errors.PeerGone` if the session is not established.
    """
    with trio.fail_after(connect_timeout):
        stream = await trio.open_tcp_stream(host, port)
    return await node.connect_stream(stream, f"{host}:{port}")
