"""Serving an ASGI app on trio: hypercorn's trio worker, configured for a small local listener.

Why hypercorn: a maintained ASGI server (by the Quart and h11 people) that
runs natively on trio (``hypercorn.trio.serve`` is an ordinary trio task
that reports its bound addresses through ``task_status``), on h11, which
STYLE.md already takes as a model. Only HTTP/1.1 and h2c are served here; no
TLS (the listener is local by default), no access log (the household's
requests are nobody's business), and hypercorn's own error log is off: the
app contains and logs its faults itself.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


def bind_address(host: str, port: int) -> str:
    """``host:port``, with brackets for an IPv6 address."""
    try:
        v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        v6 = False
    return f"[{host}]:{port}" if v6 else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve_http(app: Any, host: str, port: int, *,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``task_status`` gets the bound URLs.

    Raises ``OSError`` (address in use, not available) before starting.
    """
    config = Config()
    config.bind = [bind_address(host, port)]
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    config.keep_alive_timeout = 30.0
    config.graceful_timeout = 1.0
    await serve(app, config, task_status=task_status)
