"""Daemon component "mqtt": the household's sensors in Home Assistant, over MQTT.

Off by default. With ``[mqtt] enabled = true`` it runs a
:class:`~p2pd.views.ha_bridge.HomeAssistantBridge`: MQTT discovery configs
under ``discovery_prefix``, a retained state under ``base_topic``,
availability following the daemon (the last will says ``offline`` if it
vanishes). Adds an ``mqtt`` object to ``status``.

Owns ``[mqtt]`` (:data:`MQTT`); docs/configuration.md describes each key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho_trio
from p2pd import log
from p2pd.components.status import extend_status
from p2pd.config import Section, Table
from p2pd.control.methods import VERSION
from p2pd.errors import ConfigError
from p2pd.views.ha_bridge import HomeAssistantBridge
from p2pd.views.home_assistant import Topics, node_id
from p2pd.views.summary import household

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: where the broker is and where our topics go."""

    enabled: bool = False
    broker: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]``, or ``mqtts://`` for TLS."""
    credentials_file: str | None = None
    """Absolute path: user name on the first line, password on the second."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_id: str | None = None
    """Default ``p2pd-<member id>``."""
    discovery_prefix: str = "homeassistant"
    base_topic: str | None = None
    """Default ``p2pd/<member id>``."""
    interval_seconds: float = 60.0
    keepalive: int = 30


def _file(t: Table, key: str) -> str | None:
    value: str | None = t.string(key, None)
    if value is not None and (not os.path.isabs(value) or "\0" in value):
        raise t.error(key, f"expected an absolute path, got {value!r}")
    return value


def _topic(t: Table, key: str, default: str | None) -> str | None:
    value: str | None = t.string(key, default, max_len=200)
    if value is not None and (any(c in value for c in "+#\0") or value.startswith("/")
                              or value.endswith("/")):
        raise t.error(key, f"expected a topic without wildcards or leading/trailing /, got {value!r}")
    return value


def parse_mqtt(t: Table) -> MqttConfig:
    d = MqttConfig()
    broker = t.string("broker", d.broker, max_len=300)
    try:
        _, _, tls = paho_trio.parse_broker_url(broker)
    except ValueError as exc:
        raise t.error("broker", str(exc)) from exc
    cfg = MqttConfig(
        enabled=t.boolean("enabled", d.enabled),
        broker=broker,
        credentials_file=_file(t, "credentials_file"),
        ca_file=_file(t, "ca_file"),
        cert_file=_file(t, "cert_file"),
        key_file=_file(t, "key_file"),
        client_id=t.string("client_id", None, max_len=64),
        discovery_prefix=_topic(t, "discovery_prefix", d.discovery_prefix) or d.discovery_prefix,
        base_topic=_topic(t, "base_topic", None),
        interval_seconds=t.number("interval_seconds", d.interval_seconds, 5.0, 3600.0),
        keepalive=t.integer("keepalive", d.keepalive, 5, 3600),
    )
    if not tls and (cfg.ca_file or cfg.cert_file):
        raise t.error("ca_file" if cfg.ca_file else "cert_file", "only applies to an mqtts:// broker")
    if cfg.key_file is not None and cfg.cert_file is None:
        raise t.error("key_file", "needs cert_file")
    return cfg


MQTT = Section("mqtt", parse_mqtt)


class MqttComponent:
    name = "mqtt"
    section = MQTT

    async def start(self, ctx: DaemonContext) -> None:
        cfg = MQTT.get(ctx.config)
        if not cfg.enabled:
            extend_status(ctx.control, "mqtt", lambda: {"enabled": False})
            return
        if cfg.credentials_file is not None:
            try:
                paho_trio.read_credentials(cfg.credentials_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"[mqtt].credentials_file: {exc}") from exc
        host, port, tls = paho_trio.parse_broker_url(cfg.broker)
        broker = paho_trio.Broker(host, port, tls, ca_file=cfg.ca_file, cert_file=cfg.cert_file,
                                  key_file=cfg.key_file)
        me = ctx.identity.member_id
        client = paho_trio.MqttClient(broker, client_id=cfg.client_id or f"p2pd-{me}",
                                      credentials_file=cfg.credentials_file,
                                      keepalive=cfg.keepalive)
        topics = Topics(cfg.discovery_prefix, cfg.base_topic or f"p2pd/{me}", node_id(me))
        bridge = HomeAssistantBridge(client, topics, member_id=me,
                                     currency=ctx.config.tariffs.currency, version=VERSION,
                                     source=lambda: household(ctx), events=ctx.node.events,
                                     interval=cfg.interval_seconds)
        ctx.services["mqtt"] = bridge
        await ctx.nursery.start(bridge.serve)
        extend_status(ctx.control, "mqtt", bridge.status)
        log.info("mqtt_started", broker=broker.address, state_topic=topics.state)


DAEMON_COMPONENT = MqttComponent()
