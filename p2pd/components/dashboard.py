"""Daemon component "dashboard": the household's web page and ``/metrics``, read-only.

Off by default. With ``[dashboard] enabled = true`` the daemon serves, on
``host:port`` (loopback by default), the page and its JSON
(:mod:`p2pd.views.dashboard`) and, unless ``metrics = false``, the
Prometheus metrics (:mod:`p2pd.views.metrics`), with hypercorn's trio worker
(:mod:`p2pd.views.http`). GET and HEAD only: no route changes anything.
Adds a ``dashboard`` object (its URL) to ``status``.

Owns ``[dashboard]`` (:data:`DASHBOARD`); docs/configuration.md describes each key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pd import log
from p2pd.components.status import extend_status
from p2pd.config import Section, Table
from p2pd.errors import P2pdError
from p2pd.views.dashboard import DashboardApp
from p2pd.views.http import is_loopback, serve_http
from p2pd.views.metrics import NodeMetrics
from p2pd.views.summary import household, todays_chart

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

DEFAULT_PORT = 7480


@dataclass(frozen=True)
class DashboardConfig:
    """``[dashboard]``: where the local web listener is and what it serves."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    pages: bool = True
    """The household's page and /api/household."""
    metrics: bool = True
    """/metrics, for Prometheus."""
    refresh_seconds: int = 30


def parse_dashboard(t: Table) -> DashboardConfig:
    d = DashboardConfig()
    cfg = DashboardConfig(
        enabled=t.boolean("enabled", d.enabled),
        host=t.string("host", d.host, max_len=253),
        port=t.integer("port", d.port, 0, 65535),
        pages=t.boolean("pages", d.pages),
        metrics=t.boolean("metrics", d.metrics),
        refresh_seconds=t.integer("refresh_seconds", d.refresh_seconds, 5, 3600),
    )
    if not (cfg.pages or cfg.metrics):
        raise t.error("pages", "pages and metrics are both off: set enabled = false instead")
    return cfg


DASHBOARD = Section("dashboard", parse_dashboard)


class DashboardComponent:
    name = "dashboard"
    section = DASHBOARD

    async def start(self, ctx: DaemonContext) -> None:
        cfg = DASHBOARD.get(ctx.config)
        if not cfg.enabled:
            extend_status(ctx.control, "dashboard", lambda: {"enabled": False})
            return
        metrics = NodeMetrics(ctx) if cfg.metrics else None
        if metrics is not None:
            await ctx.nursery.start(metrics.watch_loop_lag)
            ctx.services["metrics"] = metrics
        loopback = is_loopback(cfg.host)
        app = DashboardApp(lambda: household(ctx), lambda: todays_chart(ctx), metrics=metrics,
                           pages=cfg.pages, refresh=cfg.refresh_seconds, loopback_only=loopback)
        try:
            urls: list[str] = await ctx.nursery.start(serve_http, app, cfg.host, cfg.port)
        except OSError as exc:
            raise P2pdError(f"[dashboard]: cannot listen on {cfg.host}:{cfg.port}: "
                            f"{exc.strerror or exc}") from exc
        ctx.services["dashboard"] = app
        extend_status(ctx.control, "dashboard", lambda: {
            "enabled": True, "urls": urls, "requests": app.requests, "errors": app.errors})
        if not loopback:
            log.warning("dashboard_not_loopback", host=cfg.host,
                        hint="anyone who reaches this address sees the household's trades")
        log.info("dashboard_listening", urls=",".join(urls), metrics=cfg.metrics)


DAEMON_COMPONENT = DashboardComponent()
