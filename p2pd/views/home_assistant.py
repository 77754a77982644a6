"""Home Assistant MQTT discovery and state for the household's sensors (no I/O).

Home Assistant creates an entity for each retained config message on
``<discovery_prefix>/sensor/<node_id>/<object_id>/config``; all of ours
read one retained JSON state message (``<base_topic>/state``) through a
``value_template``, and follow ``<base_topic>/availability`` (``online``,
or ``offline``: published on a clean stop and, as the last will, by the
broker when the daemon vanishes).

The energy sensors are ``device_class: energy``, ``state_class:
total_increasing``, in Wh, so the Energy dashboard can use them (today's
counters restart at midnight UTC: Home Assistant reads a drop as a new
cycle). Savings are ``device_class: monetary`` in the tariff's currency with
``state_class: total`` (a saving can shrink).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from p2pd.market.settlement import PRICE_SCALE
from p2pd.views.summary import Household

ONLINE, OFFLINE = "online", "offline"
HA_STATUS_TOPIC = "status"
"""Under the discovery prefix: Home Assistant's birth message (``online``) after it starts."""


@dataclass(frozen=True)
class Sensor:
    object_id: str
    name: str
    key: str
    """The field of the state JSON it shows."""
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()


METER_STATES = ("ok", "retrying", "starting", "none")


def _energy(object_id: str, name: str, key: str, icon: str) -> Sensor:
    return Sensor(object_id, name, key, "Wh", "energy", "total_increasing", icon)


def sensors(currency: str) -> tuple[Sensor, ...]:
    price = f"{currency}/kWh"
    return (
        _energy("bought_today", "P2P energy bought today", "bought_today_wh",
                "mdi:transmission-tower-import"),
        _energy("sold_today", "P2P energy sold today", "sold_today_wh", "mdi:transmission-tower-export"),
        _energy("bought_month", "P2P energy bought this month", "bought_month_wh",
                "mdi:transmission-tower-import"),
        _energy("sold_month", "P2P energy sold this month", "sold_month_wh",
                "mdi:transmission-tower-export"),
        Sensor("saving_today", "Saved today against the supplier", "saving_today", currency,
               "monetary", "total", "mdi:piggy-bank"),
        Sensor("saving_month", "Saved this month against the supplier", "saving_month", currency,
               "monetary", "total", "mdi:piggy-bank"),
        Sensor("trading_slot", "Trading slot", "trading_slot", device_class="timestamp",
               icon="mdi:clock-outline"),
        Sensor("offer", "Own offer in the trading slot", "offer_wh", unit="Wh",
               icon="mdi:solar-power"),
        Sensor("offer_price", "Own offer price", "offer_price", unit=price, icon="mdi:cash-plus"),
        Sensor("bid", "Own bid in the trading slot", "bid_wh", unit="Wh", icon="mdi:home-lightning-bolt"),
        Sensor("bid_price", "Own bid price", "bid_price", unit=price, icon="mdi:cash-minus"),
        Sensor("peers", "Peers connected", "peers", state_class="measurement",
               icon="mdi:account-multiple"),
        Sensor("meter", "Meter health", "meter", device_class="enum", icon="mdi:meter-electric",
               options=METER_STATES),
    )


@dataclass(frozen=True)
class Topics:
    """Where our messages go; ``node_id`` is the member id made topic-safe."""

    discovery_prefix: str
    base_topic: str
    node_id: str

    @property
    def state(self) -> str:
        return f"{self.base_topic}/state"

    @property
    def availability(self) -> str:
        return f"{self.base_topic}/availability"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/{HA_STATUS_TOPIC}"

    def config(self, sensor: Sensor) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/{sensor.object_id}/config"


def node_id(member_id: str) -> str:
    """``p2pd_<member>`` with what discovery topics cannot hold replaced by ``_``."""
    return "p2pd_" + re.sub(r"[^A-Za-z0-9_-]", "_", member_id)


def discovery(topics: Topics, member_id: str, currency: str, version: str) -> list[tuple[str, str]]:
    """The retained config messages, as ``(topic, JSON payload)``."""
    device = {"identifiers": [topics.node_id], "name": f"p2pd {member_id}", "manufacturer": "p2pd",
              "model": "peer-to-peer electricity trading daemon", "sw_version": version}
    out = []
    for s in sensors(currency):
        config: dict[str, Any] = {
            "name": s.name, "unique_id": f"{topics.node_id}_{s.object_id}",
            "state_topic": topics.state, "value_template": f"{{{{ value_json.{s.key} }}}}",
            "availability_topic": topics.availability, "payload_available": ONLINE,
            "payload_not_available": OFFLINE, "device": device,
            "origin": {"name": "p2pd", "sw_version": version},
        }
        for key, value in (("unit_of_measurement", s.unit), ("device_class", s.device_class),
                           ("state_class", s.state_class), ("icon", s.icon)):
            if value is not None:
                config[key] = value
        if s.options:
            config["options"] = list(s.options)
        out.append((topics.config(s), json.dumps(config, sort_keys=True)))
    return out


def _money(units: int | None) -> float | None:
    return None if units is None else round(units / PRICE_SCALE, 6)


def state(h: Household) -> dict[str, Any]:
    """The state JSON every sensor reads (prices and money in currency units)."""
    return {
        "bought_today_wh": h.today.bought_wh, "sold_today_wh": h.today.sold_wh,
        "bought_month_wh": h.month.bought_wh, "sold_month_wh": h.month.sold_wh,
        "saving_today": _money(h.today.saving), "saving_month": _money(h.month.saving),
        "trades_today": h.today.trades, "trades_month": h.month.trades,
        "trading_slot": datetime.fromtimestamp(h.slot.slot_start, timezone.utc).isoformat(),
        "offer_wh": h.slot.offer_wh, "offer_price": _money(h.slot.offer_price),
        "bid_wh": h.slot.bid_wh, "bid_price": _money(h.slot.bid_price),
        "peers": len(h.peers), "meter": h.meter.state if h.meter is not None else "none",
        "currency": h.currency,
    }
