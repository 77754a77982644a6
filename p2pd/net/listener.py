"""TCP listener and dialer for peer connections."""

from __future__ import annotations

import errno
import logging
import os

import trio

from p2pd import log
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection


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
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, node, listener)


# As trio.serve_listeners: running out of descriptors or memory is waited out.
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept_loop(node: Node, listener: trio.SocketListener) -> None:
    """Accept, screen, and only then spend a task on a connection.

    A refused stranger costs us an accept and a close, no task and no await
    (bench/attack.py measures this as ``rejection_cost_ratio``). Admitted
    connections are registered before the next accept, so the caps count
    them at once, and run in the node's nursery like outbound ones.
    """
    async with listener:  # closed when the loop is cancelled, as serve_listeners does
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                node.logs.emit(logging.ERROR, node.clock.now(), "accept_failed", str(exc.errno),
                               {"error": os.strerror(exc.errno)})
                await trio.sleep(0.1)
                continue
            address = _peer_address(stream)
            if node.screen(address) is not None:
                stream.socket.close()
                continue
            conn = node.new_connection(stream, initiator=False, address=address)
            node.nursery.start_soon(node.serve_connection, conn)


async def dial(node: Node, host: str, port: int, *, connect_timeout: float = 10.0) -> PeerConnection:
    """Open a TCP connection to ``host:port`` and establish a session.

    Raises :class:`OSError` if the TCP connection fails and
    :class:`p2pd.errors.PeerGone` if the session is not established.
    """
    with trio.fail_after(connect_timeout):
        stream = await trio.open_tcp_stream(host, port)
    return await node.connect_stream(stream, f"{host}:{port}")
