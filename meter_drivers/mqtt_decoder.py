"""Meter readings from MQTT messages, sans-IO: topics and payloads in, readings out.

Two publishers own the P1 cable in most homes that have Home Assistant:

* **DSMR-reader** publishes each telegram either split, one topic per field
  (``dsmr/reading/electricity_delivered_1`` = ``"1234.567"`` kWh, ...), or
  as one JSON object (``dsmr/json``: ``{"electricity_delivered_1":
  "1234.567", ..., "timestamp": "2027-01-15T12:00:00+01:00"}``).
  "Delivered" is what the grid delivered to the home (our import),
  "returned" what the home returned (our export); ``_1``/``_2`` are the two
  tariffs; ``electricity_currently_delivered``/``_returned`` are kW.
* **Home Assistant's MQTT statestream** publishes each entity's state as a
  plain string on ``<base_topic>/<domain>/<object_id>/state`` (retained);
  the entities' names are the household's, so their topics are configured.

:class:`MqttDecoder` keeps the latest value of each configured topic; a
reading is *fresh* once every energy topic has a value and one of them was
updated since the last reading taken. Payloads that are not numbers are
counted (``unavailable``/``unknown`` states as ``ignored``, the rest as
``unparsable``) and never raise. Readings pass the shared
:class:`~meter_drivers.base.ReadingGuard` with the register's step (a kWh
value shown with one decimal moves 100 Wh at a time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from meter_drivers.base import DEFAULT_MAX_POWER_W, MAX_TS, BadReading, Reading, ReadingGuard

FORMATS = ("dsmr_reader", "dsmr_reader_json", "ha_statestream")
MAX_PAYLOAD = 4096
"""Bytes in one payload; a DSMR-reader JSON telegram is about 1 KiB."""
_MAX_NUMBER = 32
"""Characters in one number (a 10**12 kWh register has 16 with decimals)."""
NOT_A_VALUE = frozenset({"", "unknown", "unavailable", "none", "null", "nan"})
"""States Home Assistant (and publishers in general) send when there is no value."""

DSMR_IMPORT = ("electricity_delivered_1", "electricity_delivered_2")
DSMR_EXPORT = ("electricity_returned_1", "electricity_returned_2")
DSMR_POWER_IMPORT = "electricity_currently_delivered"
DSMR_POWER_EXPORT = "electricity_currently_returned"
DSMR_TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class TopicMap:
    """Where each value comes from, and in which unit."""

    import_topics: tuple[str, ...]
    export_topics: tuple[str, ...]
    power_import_topic: str | None = None
    power_export_topic: str | None = None
    timestamp_topic: str | None = None
    json_topic: str | None = None
    """dsmr_reader_json: every field arrives in one JSON object on this topic."""
    energy_unit: str = "kWh"
    power_unit: str = "kW"

    def subscriptions(self) -> list[str]:
        if self.json_topic is not None:
            return [self.json_topic]
        topics = [*self.import_topics, *self.export_topics, self.power_import_topic,
                  self.power_export_topic, self.timestamp_topic]
        return list(dict.fromkeys(t for t in topics if t is not None))


def dsmr_reader_topics(prefix: str = "dsmr/reading") -> TopicMap:
    """DSMR-reader's split-topic defaults."""
    return TopicMap(tuple(f"{prefix}/{f}" for f in DSMR_IMPORT),
                    tuple(f"{prefix}/{f}" for f in DSMR_EXPORT),
                    f"{prefix}/{DSMR_POWER_IMPORT}", f"{prefix}/{DSMR_POWER_EXPORT}",
                    f"{prefix}/{DSMR_TIMESTAMP}")


def dsmr_reader_json_topics(topic: str = "dsmr/json") -> TopicMap:
    """DSMR-reader's JSON telegram: the fields' names stand in for topics."""
    return TopicMap(DSMR_IMPORT, DSMR_EXPORT, DSMR_POWER_IMPORT, DSMR_POWER_EXPORT, DSMR_TIMESTAMP,
                    json_topic=topic)


@dataclass
class MqttStats:
    messages: int = 0
    ignored: int = 0
    """Payloads that say there is no value (``unavailable``, ``unknown``)."""
    unparsable: int = 0
    """Payloads that are not a number (or a JSON object) where one was expected."""
    rejected: int = 0
    """Readings the guard refused (see :class:`~meter_drivers.base.ReadingGuard`)."""


@dataclass
class _Value:
    number: Decimal
    step_wh: int = 1


@dataclass
class MqttDecoder:
    """Latest values by topic; see the module docstring."""

    topics: TopicMap
    clock: Callable[[], float]
    max_power_w: int = DEFAULT_MAX_POWER_W
    stats: MqttStats = field(default_factory=MqttStats)

    def __post_init__(self) -> None:
        self.guard = ReadingGuard(max_power_w=self.max_power_w)
        self.values: dict[str, _Value] = {}
        self.meter_ts: int | None = None
        self._updated = False

    @property
    def energy_keys(self) -> tuple[str, ...]:
        return (*self.topics.import_topics, *self.topics.export_topics)

    @property
    def fresh(self) -> bool:
        """All energy values known, and one changed since the last :meth:`take`."""
        return self._updated and all(k in self.values for k in self.energy_keys)

    def feed(self, topic: str, payload: bytes) -> None:
        """Take one message; never raises (bad payloads are counted in :attr:`stats`)."""
        self.stats.messages += 1
        if len(payload) > MAX_PAYLOAD:
            self.stats.unparsable += 1
            return
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.stats.unparsable += 1
            return
        if self.topics.json_topic is not None:
            if topic == self.topics.json_topic:
                self._feed_json(text)
            return
        self._feed_value(topic, text)

    def _feed_json(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            self.stats.unparsable += 1
            return
        for key in (*self.energy_keys, self.topics.power_import_topic,
                    self.topics.power_export_topic, self.topics.timestamp_topic):
            if key is not None and key in obj:
                value = obj[key]
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    self.stats.unparsable += 1
                    continue
                self._feed_value(key, str(value))

    def _feed_value(self, key: str, text: str) -> None:
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            text = text[1:-1].strip()  # statestream attributes are JSON strings
        if text.lower() in NOT_A_VALUE:
            self.stats.ignored += 1
            return
        if key == self.topics.timestamp_topic:
            ts = _timestamp(text)
            if ts is None:
                self.stats.unparsable += 1
            else:
                self.meter_ts = ts
            return
        number = _number(text)
        if number is None:
            self.stats.unparsable += 1
            return
        if key in self.energy_keys:
            unit_wh = 1000 if self.topics.energy_unit == "kWh" else 1
            exponent = number.as_tuple().exponent
            decimals = -exponent if isinstance(exponent, int) else 0
            step = max(1, unit_wh // 10 ** max(0, decimals))
            self.values[key] = _Value(number * unit_wh, step)
            self._updated = True
        elif key in (self.topics.power_import_topic, self.topics.power_export_topic):
            self.values[key] = _Value(number * (1000 if self.topics.power_unit == "kW" else 1))

    def take(self) -> Reading:
        """The current reading, checked by the guard; marks it no longer fresh.

        Raises :class:`~meter_drivers.base.BadReading` (counted in
        ``stats.rejected``) if the guard refuses it, and ``KeyError`` if an
        energy value is still missing (check :attr:`fresh` first).
        """
        self._updated = False
        imp = sum(int(self.values[k].number) for k in self.topics.import_topics)
        exp = sum(int(self.values[k].number) for k in self.topics.export_topics)
        step = max(self.values[k].step_wh for k in self.energy_keys)
        power: int | None = None
        pi, pe = self.topics.power_import_topic, self.topics.power_export_topic
        if (pi is None or pi in self.values) and (pe is None or pe in self.values) and (pi or pe):
            watts = (self.values[pi].number if pi else Decimal(0)) - (
                self.values[pe].number if pe else Decimal(0))
            power = int(watts.to_integral_value())
        ts = self.meter_ts if self.meter_ts is not None else int(self.clock())
        try:
            return self.guard.check(Reading(ts, imp, exp, power), step_wh=step)
        except BadReading:
            self.stats.rejected += 1
            raise


def _number(text: str) -> Decimal | None:
    if len(text) > _MAX_NUMBER:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) > Decimal(10) ** 15:
        return None
    return number


def _timestamp(text: str) -> int | None:
    """Unix seconds from ISO 8601 (naive means UTC) or a number of seconds."""
    if len(text) > 64:
        return None
    number = _number(text)
    if number is not None:
        value = float(number)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        value = moment.timestamp()
    if not math.isfinite(value) or not 0 <= value <= MAX_TS:
        return None
    return int(value)
