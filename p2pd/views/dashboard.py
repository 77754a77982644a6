"""The dashboard's ASGI app: GET only, nothing that changes the node.

Routes: ``/`` (the page, :mod:`p2pd.views.page`), ``/api/household`` (the
same as JSON), ``/metrics`` (Prometheus text, when enabled) and
``/healthz``. Any other method gets 405 (``Allow: GET, HEAD``), any other
path 404. A listener on a loopback address answers only requests whose
``Host`` is a loopback name, so a web page cannot read it through DNS
rebinding. A fault while answering is logged once per cause and answered
500; it never reaches the server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from p2pd import log
from p2pd.views.metrics import CONTENT_TYPE, NodeMetrics
from p2pd.views.page import render
from p2pd.views.summary import HourBar, Household

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
     b"form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class DashboardApp:
    """An ASGI 3 application; ``household()`` and ``chart()`` read the node on each request."""

    def __init__(self, household: Callable[[], Awaitable[Household]],
                 chart: Callable[[], Awaitable[Sequence[HourBar]]], *,
                 metrics: NodeMetrics | None, pages: bool = True, refresh: int = 30,
                 loopback_only: bool = True) -> None:
        self.household = household
        self.chart = chart
        self.metrics = metrics
        self.pages = pages
        self.refresh = refresh
        self.loopback_only = loopback_only
        self.requests = 0
        self.errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served
        self.requests += 1
        try:
            status, ctype, body, extra = await self._answer(scope)
        except Exception as exc:  # noqa: BLE001 - containment: a bad view must not hurt the daemon
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.exception("dashboard_error", exc, path=str(scope.get("path"))[:100], total=self.errors)
            status, ctype, body, extra = 500, b"text/plain", b"internal error\n", []
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                   *SECURITY_HEADERS, *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    async def _answer(self, scope: Scope) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        if self.loopback_only and not _loopback_host(scope):
            return 421, b"text/plain", b"this dashboard answers only to localhost\n", []
        if scope["method"] not in ("GET", "HEAD"):
            return 405, b"text/plain", b"read-only: GET or HEAD only\n", [(b"allow", b"GET, HEAD")]
        path = scope["path"]
        if path == "/healthz":
            return 200, b"text/plain", b"ok\n", []
        if path == "/metrics" and self.metrics is not None:
            return 200, CONTENT_TYPE.encode(), self.metrics.render(), []
        if self.pages and path == "/":
            h = await self.household()
            page = render(h, await self.chart(), refresh=self.refresh)
            return 200, b"text/html; charset=utf-8", page.encode(), []
        if self.pages and path == "/api/household":
            h = await self.household()
            doc = {**h.to_json(), "chart": [asdict(b) for b in await self.chart()]}
            return 200, b"application/json", json.dumps(doc).encode(), []
        return 404, b"text/plain", b"not found\n", []


def _loopback_host(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                host = host.split("]", 1)[0] + "]"
            else:
                host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            return host in LOOPBACK_NAMES
    return False  # HTTP/1.1 requires Host; HTTP/1.0 clients without it are not browsers we serve


async def _lifespan(receive: Receive, send: Send) -> None:
    for _ in range(2):  # startup, then shutdown
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
