"""The MQTT meter driver: DSMR-reader and Home Assistant statestream, over a real mosquitto."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from meter_drivers import (
    BadReading,
    DriverConfigError,
    MeterUnavailable,
    MonitoredMeter,
    MqttDecoder,
    Reading,
    create_driver,
)
from meter_drivers.mqtt import MqttMeter, topic_map
from meter_drivers.mqtt_decoder import TopicMap, dsmr_reader_topics
from paho_trio import Broker, MqttClient, parse_broker_url

WAIT = 10.0
T0 = 1_800_000_000


@asynccontextmanager
async def publisher(url: str) -> AsyncIterator[MqttClient]:
    """A connected client that plays DSMR-reader or Home Assistant."""
    host, port, tls = parse_broker_url(url)
    client = MqttClient(Broker(host, port, tls), client_id="pub")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(WAIT):
            while not client.connected:
                await client.wait_state_change()
        yield client
        nursery.cancel_scope.cancel()


def dsmr_split(pub: MqttClient, t1: str, t2: str, r1: str, r2: str, kw_in: str = "0.250",
               kw_out: str = "0.000", ts: str | None = None, retain: bool = False) -> None:
    base = "dsmr/reading/"
    for field, value in (("electricity_delivered_1", t1), ("electricity_delivered_2", t2),
                         ("electricity_returned_1", r1), ("electricity_returned_2", r2),
                         ("electricity_currently_delivered", kw_in),
                         ("electricity_currently_returned", kw_out)):
        assert pub.publish(base + field, value, retain=retain)
    if ts is not None:
        assert pub.publish(base + "timestamp", ts, retain=retain)


async def test_dsmr_reader_split_topics(mosquitto: Any) -> None:
    clock = iter(range(T0, T0 + 1000, 10))
    meter = MqttMeter({"broker": mosquitto.url, "clock": lambda: next(clock)})
    async with publisher(mosquitto.url) as pub:
        # Retained values reach a meter that subscribes later (DSMR-reader can retain).
        dsmr_split(pub, "1234.567", "2000.001", "10.000", "5.500", retain=True)
        with trio.fail_after(WAIT):
            r = await meter.read()
        assert r == Reading(T0, 3_234_568, 15_500, 250)
        # The meter's own time, when DSMR-reader sends it; the newest of a backlog wins.
        dsmr_split(pub, "1234.600", "2000.001", "10.000", "5.500", "0.100", "0.000",
                   ts="2027-01-15T12:00:00+01:00")
        dsmr_split(pub, "1234.700", "2000.001", "10.000", "5.500", "0.000", "1.500",
                   ts="2027-01-15T12:00:10+01:00")
        with trio.fail_after(WAIT):
            while meter.decoder.values.get("dsmr/reading/electricity_currently_returned") is None \
                    or meter.stats.messages < 20:
                r = await meter.read()
        assert r.import_wh == 3_234_701 and r.power_w == -1500 and r.ts == 1_800_010_810
    await meter.aclose()


async def test_dsmr_reader_json_telegram(mosquitto: Any) -> None:
    meter = create_driver("mqtt", {"broker": mosquitto.url, "format": "dsmr_reader_json",
                                   "clock": lambda: T0})
    assert isinstance(meter, MqttMeter)
    telegram = {"id": 1, "timestamp": "2027-01-15T11:00:00Z", "electricity_delivered_1": "1.000",
                "electricity_delivered_2": 2.5, "electricity_returned_1": "0.250",
                "electricity_returned_2": "0", "electricity_currently_delivered": "0.420",
                "electricity_currently_returned": "0.000", "phase_voltage_l1": "230.0"}
    async with publisher(mosquitto.url) as pub:
        pub.publish("dsmr/json", json.dumps(telegram), retain=True)
        with trio.fail_after(WAIT):
            r = await meter.read()
    assert r == Reading(1_800_010_800, 3500, 250, 420)
    await meter.aclose()


async def test_home_assistant_statestream(mosquitto: Any) -> None:
    base = "homeassistant/sensor/"
    meter = MonitoredMeter(create_driver("mqtt", {
        "broker": mosquitto.url, "format": "ha_statestream", "clock": lambda: T0,
        "import_topics": [base + "p1_import_t1/state", base + "p1_import_t2/state"],
        "export_topics": [base + "p1_export_t1/state", base + "p1_export_t2/state"],
        "power_import_topic": base + "p1_power/state"}))
    async with publisher(mosquitto.url) as pub:
        for topic, value in (("p1_import_t1", "100.5"), ("p1_import_t2", "unavailable"),
                             ("p1_export_t1", "7.125"), ("p1_export_t2", "0.000"),
                             ("p1_power", "640")):
            pub.publish(base + topic + "/state", value, retain=True)
        pub.publish(base + "p1_import_t2/state", "20.25")
        with trio.fail_after(WAIT):
            r = await meter.read()
    assert r == Reading(T0, 120_750, 7125, 640)
    assert meter.healthy and meter.driver.stats.ignored == 1  # type: ignore[attr-defined]
    await meter.aclose()


async def test_the_guard_refuses_registers_that_go_backwards(mosquitto: Any) -> None:
    meter = MqttMeter({"broker": mosquitto.url, "clock": lambda: T0})
    async with publisher(mosquitto.url) as pub:
        dsmr_split(pub, "10.000", "0", "0", "0", retain=True)
        with trio.fail_after(WAIT):
            await meter.read()
        dsmr_split(pub, "9.000", "0", "0", "0")
        with trio.fail_after(WAIT), pytest.raises(BadReading, match="backwards"):
            await meter.read()
    assert meter.stats.rejected == 1
    await meter.aclose()


async def test_silence_and_a_missing_broker_are_unavailable(mosquitto: Any) -> None:
    meter = MqttMeter({"broker": mosquitto.url, "timeout": 0.5})
    async with publisher(mosquitto.url) as pub:
        pub.publish("dsmr/reading/electricity_delivered_1", "not a number", retain=True)
        with pytest.raises(MeterUnavailable, match="1 unparsable"):
            await meter.read()
    mosquitto.stop()
    with pytest.raises(MeterUnavailable, match="127.0.0.1"):
        await meter.read()
    await meter.aclose()


def test_decoder_units_steps_and_bad_payloads() -> None:
    topics = TopicMap(("i",), ("e",), "p", None, "t", energy_unit="kWh", power_unit="W")
    d = MqttDecoder(topics, lambda: T0)
    for topic, payload in (("i", b"12.3"), ("e", b'"4"'), ("p", b"-250"), ("t", b"1800000000"),
                           ("i", b"\xff"), ("i", b"1e999999"), ("i", b"x" * 5000), ("t", b"soon")):
        d.feed(topic, payload)
    assert d.fresh
    r = d.take()
    assert r == Reading(T0, 12_300, 4000, -250) and not d.fresh
    assert d.stats.unparsable == 4
    # A register shown with one decimal moves 100 Wh at a time: a step is no jump.
    d.feed("i", b"12.4")
    assert d.take().import_wh == 12_400


@pytest.mark.parametrize(("options", "key"), [
    ({"broker": "http://x"}, "broker"),
    ({"broker": "mqtt://x", "format": "ha_statestream"}, "import_topics"),
    ({"broker": "mqtt://x", "import_topics": ["a/#"]}, "import_topics"),
    ({"broker": "mqtt://x", "import_topics": [f"t{i}" for i in range(9)]}, "import_topics"),
    ({"broker": "mqtt://x", "format": "dsmr_reader_json", "import_topics": ["a"]}, "import_topics"),
    ({"broker": "mqtt://x", "json_topic": "j"}, "json_topic"),
    ({"broker": "mqtt://x", "ca_file": "/ca.pem"}, "ca_file"),
    ({"broker": "mqtt://x", "energy_unit": "MWh"}, "energy_unit"),
    ({"broker": "mqtt://x", "import_topics": "a"}, "import_topics"),
])
def test_bad_options(options: dict[str, Any], key: str) -> None:
    with pytest.raises(DriverConfigError) as info:
        create_driver("mqtt", options)
    assert info.value.key == key


def test_dsmr_reader_topics_can_be_overridden() -> None:
    opts = MqttMeter({"broker": "mqtt://x", "export_topics": ["solar/returned"]}).topics
    assert opts.import_topics == dsmr_reader_topics().import_topics
    assert opts.export_topics == ("solar/returned",)
    assert topic_map  # the option resolver is public for `p2pd meter read`
