"""Publishing the household's sensors to Home Assistant over MQTT (trio glue).

:class:`HomeAssistantBridge` keeps one broker connection
(:class:`paho_trio.MqttClient`, reconnecting with back-off), and on each
connect publishes the discovery configs, ``online`` and the state, all
retained. The state is published again when something it shows may have
changed (a trade, a session, a statement, one of our orders) and at least
every ``interval`` seconds (the meter, the day's turn), never more than
once a second. When Home Assistant restarts it announces ``online`` on
``<discovery_prefix>/status``: the discovery configs go out again then.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio

import paho_trio
from p2pd import log
from p2pd.events import (
    EventBus,
    NodeEvent,
    OrderCancelled,
    OrderSeen,
    SessionClosed,
    SessionOpened,
    StatementSigned,
    TradeCommitted,
)
from p2pd.views.home_assistant import OFFLINE, ONLINE, Topics, discovery, state
from p2pd.views.summary import Household

MIN_GAP = 1.0
"""Seconds between two state messages, however many events arrive."""


class HomeAssistantBridge:
    """See the module docstring. ``source()`` gives the household's view now."""

    def __init__(self, client: paho_trio.MqttClient, topics: Topics, *, member_id: str,
                 currency: str, version: str, source: Callable[[], Awaitable[Household]],
                 events: EventBus, interval: float = 60.0) -> None:
        self.client = client
        self.topics = topics
        self.member_id = member_id
        self.currency = currency
        self.version = version
        self.source = source
        self.events = events
        self.interval = interval
        self.states_published = 0
        self.state_errors = 0
        self._dirty = trio.Event()
        client.will = paho_trio.Will(topics.availability, OFFLINE.encode(), retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.subscribe(topics.ha_status)

    def _announce(self) -> None:
        for topic, payload in discovery(self.topics, self.member_id, self.currency, self.version):
            self.client.publish(topic, payload, retain=True)

    def _on_connect(self) -> None:
        self._announce()
        self.client.publish(self.topics.availability, ONLINE, retain=True)
        log.info("mqtt_connected", broker=self.client.broker.address, connects=self.client.connects)
        self._dirty.set()

    def _on_message(self, msg: paho_trio.Message) -> None:
        if msg.topic == self.topics.ha_status and msg.payload.strip() == ONLINE.encode():
            self._announce()  # Home Assistant restarted: it forgets non-retained configs
            self._dirty.set()

    def _matters(self, event: NodeEvent) -> bool:
        if isinstance(event, (OrderSeen, OrderCancelled)):
            return event.member == self.member_id
        return isinstance(event, (TradeCommitted, SessionOpened, SessionClosed, StatementSigned))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; then ``offline`` goes out and the client disconnects."""
        async with trio.open_nursery() as nursery:
            async with self.events.subscribe() as receive:
                await nursery.start(self.client.run)
                nursery.start_soon(self._publish_loop)
                task_status.started()
                async for event in receive:
                    if self._matters(event):
                        self._dirty.set()

    async def _publish_loop(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self._dirty.wait()
            self._dirty = trio.Event()
            if self.client.connected:
                await self.publish_state()
            await trio.sleep(MIN_GAP)

    async def publish_state(self) -> bool:
        """Publish the state now; False if not connected or the view failed (logged, sampled)."""
        try:
            household = await self.source()
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the bridge
            self.state_errors += 1
            if self.state_errors == 1 or self.state_errors % 100 == 0:
                log.warning("mqtt_state_failed", error=f"{type(exc).__name__}: {exc}"[:200],
                            total=self.state_errors)
            return False
        payload = json.dumps(state(household), sort_keys=True)
        if self.client.publish(self.topics.state, payload, retain=True):
            self.states_published += 1
            return True
        return False

    def status(self) -> dict[str, object]:
        c = self.client
        return {"enabled": True, "broker": c.broker.address, "connected": c.connected,
                "connects": c.connects, "failures": c.failures, "last_error": c.last_error,
                "states_published": self.states_published, "state_topic": self.topics.state}
