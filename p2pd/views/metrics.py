"""Prometheus metrics of a running node, rendered by prometheus-client at each scrape.

:class:`NodeMetrics` owns a :class:`prometheus_client.CollectorRegistry` of
its own (never the library's global one, which would mix in whatever else
the process registered, and would not reset between daemons in one
process). Most values are read from the node when scraped
(:class:`_NodeCollector`): nothing is copied on the hot paths but two
histograms, fed by hooks: the receipt writer's commit latency and the event
loop's lag (:meth:`NodeMetrics.watch_loop_lag`). No thread, no server of its
own: the dashboard's listener serves :meth:`NodeMetrics.render` on
``/metrics``. docs/operations-metrics.md lists every metric with example
alerts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from p2pd.control.methods import VERSION
from p2pd.roles.receipt_writer import ReceiptWriter

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format (0.0.4), which every Prometheus version scrapes."""
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL = 0.5
"""Seconds between two probes of the event loop's lag."""
METER_STATES = ("starting", "ok", "retrying")
# Node counters by prefix: "<prefix><REASON>" -> metric and label.
_REFUSAL_STAGES = (("refused:", "connection"), ("session_refused:", "session"))


class NodeMetrics:
    """The registry, its collector and the two histograms; see the module docstring."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "p2pd_store_commit_seconds", "Wall time of one receipt transaction (group commit)",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.loop_lag = Histogram(
            "p2pd_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL} s sleep of the event loop woke up",
            buckets=LAG_BUCKETS, registry=self.registry)
        self.registry.register(_NodeCollector(ctx))
        writer = receipt_writer(ctx)
        if writer is not None:
            writer.on_commit.append(self._observe_commit)

    def _observe_commit(self, receipts: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    async def watch_loop_lag(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Sleep :data:`LAG_INTERVAL` again and again; observe how late each wake-up is."""
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(LAG_INTERVAL)
            self.loop_lag.observe(max(0.0, trio.current_time() - before - LAG_INTERVAL))


def receipt_writer(ctx: DaemonContext) -> ReceiptWriter | None:
    """The group-commit writer, under the wrappers other components put around it (replication)."""
    writer: Any = ctx.services.get("writer")
    for _ in range(8):
        if writer is None or isinstance(writer, ReceiptWriter):
            return writer
        writer = getattr(writer, "inner", None)
    return None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_prefix(counters: dict[str, int], prefix: str) -> Iterator[tuple[str, int]]:
    for key, value in sorted(counters.items()):
        if key.startswith(prefix):
            yield key[len(prefix):], value


class _NodeCollector(Collector):
    """Reads the node, the market, the policer, the store's health and the meter at scrape time."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        ctx = self.ctx
        node = ctx.node
        counters = dict(node.counters)
        now = node.clock.now()
        info = GaugeMetricFamily("p2pd_info", "The daemon: member, community, role and version",
                                 labels=["member", "community", "role", "version"])
        info.add_metric([node.member_id, node.policy.community, node.identity.credential.role,
                         VERSION], 1)
        yield info
        yield _gauge("p2pd_uptime_seconds", "Seconds since the node started", now - node.started_at)
        yield _gauge("p2pd_sessions", "Established sessions now", len(node.sessions))
        yield _counter("p2pd_sessions_established", "Sessions established",
                       counters.get("sessions_established", 0))
        yield _gauge("p2pd_handshakes_in_progress", "Connections still in their handshake",
                     node.handshakes_in_progress)
        failed = CounterMetricFamily("p2pd_handshakes_failed", "Handshakes that did not complete",
                                     labels=["reason"])
        for reason, value in _by_prefix(counters, "handshake_failed:"):
            failed.add_metric([reason], value)
        yield failed
        refusals = CounterMetricFamily(
            "p2pd_refusals", "Connections refused before the handshake, and sessions refused after it",
            labels=["stage", "reason"])
        for prefix, stage in _REFUSAL_STAGES:
            for reason, value in _by_prefix(counters, prefix):
                refusals.add_metric([stage, reason], value)
        yield refusals
        yield from self._messages()
        drops = CounterMetricFamily("p2pd_policing_drops",
                                    "Messages dropped by rate limits, by category",
                                    labels=["category"])
        for category, value in _by_prefix(counters, "policed:"):
            drops.add_metric([category], value)
        yield drops
        yield _counter("p2pd_bans", "Bans imposed", counters.get("bans", 0))
        policer = ctx.services.get("policer")
        active = sum(1 for b in policer.bans.values() if b.until > now) if policer is not None else 0
        yield _gauge("p2pd_bans_active", "Members banned now", active)
        yield _counter("p2pd_feedback_sent", "Congestion feedback sent to members",
                       counters.get("feedback_sent", 0))
        yield from self._store()
        yield from self._meter()

    def _messages(self) -> Iterator[Metric]:
        node = self.ctx.node
        family = CounterMetricFamily("p2pd_messages", "Session messages, by direction, type and category",
                                     labels=["direction", "type", "category"])
        for direction, counts in (("in", node.received), ("out", node.sent)):
            for msg_type, value in sorted(counts.items(), key=lambda kv: kv[0].__name__):
                family.add_metric([direction, msg_type.__name__, str(msg_type.CATEGORY)], value)
        yield family

    def _store(self) -> Iterator[Metric]:
        ctx = self.ctx
        writer = receipt_writer(ctx)
        yield _counter("p2pd_receipts_committed", "Trade receipts committed to the store",
                       writer.receipts if writer is not None else 0)
        yield _counter("p2pd_receipt_transactions", "Store transactions that committed receipts",
                       writer.transactions if writer is not None else 0)
        health = ctx.store_health
        yield _gauge("p2pd_store_ok", "1 while the store takes writes, 0 while it refuses them",
                     1 if health.ok else 0)
        yield _counter("p2pd_store_failing_episodes", "Times the store started refusing writes",
                       health.episodes)

    def _meter(self) -> Iterator[Metric]:
        ctx = self.ctx
        counters = ctx.node.counters
        yield _counter("p2pd_meter_faults", "Meter readings lost to a fault in driver or store",
                       counters.get("meter_faults", 0))
        meter = ctx.meter
        if meter is None:
            return
        h = meter.health
        yield _gauge("p2pd_meter_up", "1 while the last meter read succeeded", 1 if meter.healthy else 0)
        state = GaugeMetricFamily("p2pd_meter_state", "The meter's health state (1 for the current one)",
                                  labels=["state"])
        for name in METER_STATES:
            state.add_metric([name], 1 if h.state.value == name else 0)
        yield state
        yield _gauge("p2pd_meter_failed_attempts", "Consecutive failed meter reads", h.attempt)
        if h.last_reading is not None:
            yield _gauge("p2pd_meter_last_reading_timestamp_seconds",
                         "The meter's time of the last good reading", h.last_reading.ts)
