"""A meter read from MQTT: DSMR-reader or Home Assistant already own the P1 cable.

Options (``driver = "mqtt"``):

- ``broker`` (str, required): ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS).
- ``credentials_file`` (str): user name on the first line, password on the
  second; not readable by everyone. ``ca_file`` (str): the CA for ``mqtts``
  (default: the system's). ``client_id`` (str, default: the broker picks).
- ``format``: ``"dsmr_reader"`` (default: split topics under
  ``dsmr/reading/``), ``"dsmr_reader_json"`` (one JSON object on
  ``json_topic``, default ``"dsmr/json"``) or ``"ha_statestream"`` (Home
  Assistant's MQTT statestream: ``import_topics`` and ``export_topics`` are
  required, e.g. ``["homeassistant/sensor/p1_energy_import_tariff_1/state",
  ...]``).
- ``import_topics``, ``export_topics`` (lists of str, at most 8 each):
  cumulative registers summed into import and export; ``power_import_topic``,
  ``power_export_topic`` (str): power each way; ``timestamp_topic`` (str):
  the meter's time (ISO 8601 or unix seconds). For ``dsmr_reader`` they
  default to DSMR-reader's topics; set them to override.
- ``energy_unit``: ``"kWh"`` (default) or ``"Wh"``; ``power_unit``:
  ``"kW"`` (default for DSMR-reader) or ``"W"`` (default for statestream).
- ``timeout`` (float s): no new energy value this long means the meter is
  unavailable; default 60, and 900 for statestream, which publishes a state
  only when it changes. ``keepalive`` (int s, default 30).
- ``max_power_w`` (int W, default 55,200): the
  :class:`~meter_drivers.base.ReadingGuard` bound, as for every driver.

The connection opens on the first ``read()`` and stays open; each
``read()`` reads everything received since the last one and returns the
newest reading (:mod:`meter_drivers.mqtt_decoder` decodes, sans-IO). Readings
are stamped with the meter's time when a timestamp arrives, else
``clock()``.
"""

from __future__ import annotations

import time
from typing import Any

import trio

import paho_trio
from meter_drivers._options import Option, in_range, max_power_option, one_of, positive, validate
from meter_drivers.base import DriverConfigError, MeterUnavailable, Reading
from meter_drivers.mqtt_decoder import (
    FORMATS,
    MqttDecoder,
    MqttStats,
    TopicMap,
    dsmr_reader_json_topics,
    dsmr_reader_topics,
)

MAX_TOPICS = 8
_STATESTREAM_TIMEOUT = 900.0


def _topic(value: str) -> str | None:
    if not value or len(value) > 256 or any(c in value for c in "+#\0"):
        return "must be an MQTT topic name (1 to 256 characters, no wildcards)"
    return None


def _topics(values: tuple[str, ...]) -> str | None:
    if len(values) > MAX_TOPICS:
        return f"at most {MAX_TOPICS} topics"
    return next((p for p in map(_topic, values) if p is not None), None)


OPTIONS = {
    "broker": Option("str"),
    "credentials_file": Option("str", None),
    "ca_file": Option("str", None),
    "client_id": Option("str", "", lambda v: None if len(v) <= 64 else "at most 64 characters"),
    "format": Option("str", "dsmr_reader", one_of(*FORMATS)),
    "json_topic": Option("str", None, _topic),
    "import_topics": Option("strings", None, _topics),
    "export_topics": Option("strings", None, _topics),
    "power_import_topic": Option("str", None, _topic),
    "power_export_topic": Option("str", None, _topic),
    "timestamp_topic": Option("str", None, _topic),
    "energy_unit": Option("str", "kWh", one_of("kWh", "Wh")),
    "power_unit": Option("str", None, one_of("kW", "W")),
    "timeout": Option("float", None, positive),
    "keepalive": Option("int", 30, in_range(5, 3600)),
    "clock": Option("callable", time.time),
    "max_power_w": max_power_option(),
}


def topic_map(opts: dict[str, Any]) -> TopicMap:
    """The topics and units of validated options. Raises DriverConfigError."""
    fmt = opts["format"]
    if fmt == "dsmr_reader_json":
        base = dsmr_reader_json_topics(opts["json_topic"] or "dsmr/json")
        for key in ("import_topics", "export_topics", "power_import_topic", "power_export_topic",
                    "timestamp_topic"):
            if opts[key] is not None:
                raise DriverConfigError(key, "does not apply to dsmr_reader_json (fields are fixed)")
        return TopicMap(base.import_topics, base.export_topics, base.power_import_topic,
                        base.power_export_topic, base.timestamp_topic, base.json_topic,
                        opts["energy_unit"], opts["power_unit"] or "kW")
    if opts["json_topic"] is not None:
        raise DriverConfigError("json_topic", "only applies with format = \"dsmr_reader_json\"")
    if fmt == "dsmr_reader":
        base = dsmr_reader_topics()
        power_unit = opts["power_unit"] or "kW"
    else:
        for key in ("import_topics", "export_topics"):
            if not opts[key]:
                raise DriverConfigError(key, "is required with format = \"ha_statestream\"")
        base = TopicMap((), ())
        power_unit = opts["power_unit"] or "W"

    def pick(key: str, default: Any) -> Any:
        return default if opts[key] is None else opts[key]

    topics = TopicMap(pick("import_topics", base.import_topics),
                      pick("export_topics", base.export_topics),
                      pick("power_import_topic", base.power_import_topic),
                      pick("power_export_topic", base.power_export_topic),
                      pick("timestamp_topic", base.timestamp_topic),
                      None, opts["energy_unit"], power_unit)
    for key in ("import_topics", "export_topics"):
        if not getattr(topics, key):
            raise DriverConfigError(key, "needs at least one topic")
    return topics


class MqttMeter:
    """Reads cumulative registers from MQTT topics; see the module docstring.

    ``read()`` raises :class:`MeterUnavailable` when the broker cannot be
    reached, the connection drops or no new energy value arrives within
    ``timeout``; :class:`~meter_drivers.base.BadReading` when the guard
    refuses the values.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        opts = validate(OPTIONS, options)
        try:
            host, port, tls = paho_trio.parse_broker_url(opts["broker"])
        except ValueError as exc:
            raise DriverConfigError("broker", str(exc)) from exc
        if opts["ca_file"] is not None and not tls:
            raise DriverConfigError("ca_file", "only applies to mqtts:// brokers")
        self.topics = topic_map(opts)
        self.timeout: float = opts["timeout"] or (
            _STATESTREAM_TIMEOUT if opts["format"] == "ha_statestream" else 60.0)
        self.broker = paho_trio.Broker(host, port, tls, ca_file=opts["ca_file"])
        self.decoder = MqttDecoder(self.topics, opts["clock"], opts["max_power_w"])
        self._opts = opts
        self._client: paho_trio.MqttClient | None = None

    @property
    def stats(self) -> MqttStats:
        return self.decoder.stats

    def _on_message(self, msg: paho_trio.Message) -> None:
        self.decoder.feed(msg.topic, msg.payload)

    async def read(self) -> Reading:
        stats = self.decoder.stats
        before = (stats.ignored, stats.unparsable)
        try:
            with trio.fail_after(self.timeout):
                if self._client is None:
                    client = paho_trio.MqttClient(
                        self.broker, client_id=self._opts["client_id"],
                        credentials_file=self._opts["credentials_file"],
                        keepalive=self._opts["keepalive"], on_message=self._on_message)
                    for topic in self.topics.subscriptions():
                        client.subscribe(topic)
                    self._client = client
                    await client.connect()
                await self._client.pump(until=lambda: self.decoder.fresh)
        except trio.TooSlowError as exc:
            connected = self._client is not None and self._client.connected
            if not connected:
                await self.aclose()
            raise MeterUnavailable(
                f"no new energy value from {self.broker.address} within {self.timeout:g} s"
                f" ({'connected' if connected else 'not connected'}; meanwhile"
                f" {stats.ignored - before[0]} payloads without a value,"
                f" {stats.unparsable - before[1]} unparsable)") from exc
        except paho_trio.MqttUnavailable as exc:
            await self.aclose()
            raise MeterUnavailable(str(exc)) from exc
        return self.decoder.take()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()
