"""TCP listener and dialer for peer connections.

The accept loop is the node's first line of defence against strangers
(docs/protocol.md §13.7, docs/operations-limits.md). It drains the kernel's
accept queue in bursts, without a trio checkpoint per connection, and screens
each connection synchronously before any task, handshake or log line exists
for it. A refused stranger costs an accept, a send of the 19-byte refusal
notice, a read of what it already sent, and a close: the same order as what
the connection cost the stranger, so a flood cannot outpace the loop and
fill the queue in front of an honest member.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

import trio

from p2pd import log
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection

# Connections taken off the kernel's queue per wake-up before other tasks
# run again: enough to empty a full queue in a few scheduler turns, small
# enough that one burst (about 3 ms of refusals) does not starve sessions.
ACCEPT_BURST = 256

# The listen backlog asked for; the kernel caps it at net.core.somaxconn
# (4096 on current Linux). A long queue absorbs bursts without dropping an
# honest SYN (dropped SYNs are retried after 1 s, then 3 s); the burst loop
# keeps it short under a flood.
LISTEN_BACKLOG = 65535


async def serve_p2p(
    node: Node, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept peers on ``host:port`` forever; reports the bound listeners."""
    listeners = await open_p2p_listeners(host, port)
    await serve_p2p_listeners(node, listeners, task_status=task_status)


async def open_p2p_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind and listen on ``host:port``, accepting nothing yet. Raises OSError.

    The kernel queues connections until :func:`serve_p2p_listeners` takes
    them: the daemon binds first (a busy port fails the start before anything
    runs) and accepts only once every message handler exists.
    """
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
    bound = [lst.socket.getsockname()[:2] for lst in listeners]
    log.info("listening", addresses=",".join(f"{h}:{p}" for h, p in bound))
    return listeners


async def serve_p2p_listeners(
    node: Node, listeners: list[trio.SocketListener], *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peers on ``listeners`` forever (closing them when cancelled)."""
    task_status.started(listeners)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, node, listener)


# As trio.serve_listeners: running out of descriptors or memory is waited out.
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# As trio's SocketListener.accept: the connection died in the queue; go on.
_GONE_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT,
                errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
                errno.ENETUNREACH}


def format_address(addr: tuple[object, ...]) -> str:
    """``("10.0.0.1", 5)`` -> ``"10.0.0.1:5"``; IPv6 hosts in brackets (``"[::1]:5"``)."""
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def refuse(sock: socket.socket, notice: bytes) -> None:
    """Send ``notice`` and close ``sock``, synchronously and without waiting."""
    try:
        sock.send(notice, socket.MSG_DONTWAIT)
        # Read what the initiator sent already (its message 1): closing with
        # unread bytes makes TCP answer with a reset, which may discard the
        # notice before the initiator reads it.
        sock.recv(4096, socket.MSG_DONTWAIT)
    except OSError:
        pass
    sock.close()


def accept_burst(node: Node, raw: socket.socket, limit: int = ACCEPT_BURST) -> tuple[int, int | None]:
    """Accept and screen up to ``limit`` queued connections; never blocks.

    Admitted connections are registered with ``node`` at once (so the caps
    count them before the next accept) and served in its nursery. Returns
    (connections taken, errno of a capacity error or None).
    """
    taken = 0
    while taken < limit:
        try:
            sock, addr = raw.accept()
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                continue
            if exc.errno in _CAPACITY_ERRNOS:
                return taken, exc.errno
            raise
        taken += 1
        address = format_address(addr)
        refusal = node.screen(address)
        if refusal is not None:
            refuse(sock, node.refusal_notice(refusal))
            continue
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        conn = node.new_connection(stream, initiator=False, address=address)
        node.nursery.start_soon(node.serve_connection, conn)
    return taken, None


async def _accept_loop(node: Node, listener: trio.SocketListener) -> None:
    """Wait until connections are queued, then take them in bursts."""
    # Accept on a duplicate of the listening descriptor: trio's accept()
    # costs a scheduler checkpoint per connection, which under a flood lets
    # the queue grow faster than it drains. wait_readable is the one yield.
    raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
    raw.setblocking(False)
    async with listener:  # closed when the loop is cancelled, as serve_listeners does
        with raw:
            while True:
                await trio.lowlevel.wait_readable(raw)
                _, err = accept_burst(node, raw)
                if err is not None:
                    node.logs.emit(logging.ERROR, node.clock.now(), "accept_failed", str(err),
                                   {"error": os.strerror(err)})
                    await trio.sleep(0.1)


async def dial(node: Node, host: str, port: int, *, connect_timeout: float = 10.0) -> PeerConnection:
    """Open a TCP connection to ``host:port`` and establish a session.

    Raises :class:`OSError` if the TCP connection fails and
    :class:`p2pd.errors.PeerGone` if the session is not established (its
    ``reason`` says why, e.g. RATE_LIMITED or TOO_MANY_CONNECTIONS when the
    responder refused us with a notice, and ``retry_after`` when to try again).
    """
    with trio.fail_after(connect_timeout):
        stream = await trio.open_tcp_stream(host, port)
    return await node.connect_stream(stream, f"{host}:{port}")
