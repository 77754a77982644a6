"""Home Assistant over MQTT, as a user meets it: a real mosquitto, two daemons that trade.

Discovery configs and the state are retained, availability follows the
daemon, and a restarted broker gets everything again once the daemon has
reconnected. Real sockets and the wall clock; every wait is for a message.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from p2pd_test_helpers import DaemonCommunity, trade_between

from p2pd.components.mqtt import parse_mqtt
from p2pd.config import Table
from p2pd.daemon import run_daemon
from p2pd.errors import ConfigError
from p2pd.views.home_assistant import sensors
from p2pd.views.summary import day_start
from paho_trio import Broker, Message, MqttClient, parse_broker_url

WAIT = 15.0


class Retained:
    """The latest payload seen on each topic, and a way to wait for a condition on them."""

    def __init__(self, url: str) -> None:
        host, port, tls = parse_broker_url(url)
        self.client = MqttClient(Broker(host, port, tls), client_id="ha", on_message=self,
                                 min_delay=0.05, max_delay=0.2)
        self.seen: dict[str, bytes] = {}
        self._changed = trio.Event()

    def __call__(self, msg: Message) -> None:
        self.seen[msg.topic] = msg.payload
        self._changed.set()
        self._changed = trio.Event()

    def json(self, topic: str) -> Any:
        return json.loads(self.seen[topic])

    async def wait(self, what: str, check: Any) -> None:
        with trio.fail_after(WAIT):
            while True:
                try:
                    if check():
                        return
                except (KeyError, ValueError):
                    pass
                await self._changed.wait()


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: a Unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="p2ha", dir="/tmp") as d:
        yield Path(d)


async def test_sensors_appear_update_after_a_trade_and_follow_the_daemon(
        home: Path, mosquitto: Any, nursery: trio.Nursery) -> None:
    ha = Retained(mosquitto.url)
    ha.client.subscribe("homeassistant/#")
    ha.client.subscribe("p2pd/#")
    await nursery.start(ha.client.run)
    c = DaemonCommunity(home)
    alice_cfg = c.config("alice", f"""
[mqtt]
enabled = true
broker = "{mosquitto.url}"
interval_seconds = 5
""")
    async with trio.open_nursery() as daemons:
        alice = await daemons.start(run_daemon, alice_cfg)
        bob = await daemons.start(run_daemon, c.config("bob"))
        state = "p2pd/alice/state"
        cfg = "homeassistant/sensor/p2pd_alice/{}/config"
        await ha.wait("discovery", lambda: all(cfg.format(s.object_id) in ha.seen
                                               for s in sensors("GBP")))
        await ha.wait("online", lambda: ha.seen["p2pd/alice/availability"] == b"online")
        bought = ha.json(cfg.format("bought_today"))
        assert bought["device_class"] == "energy" and bought["state_class"] == "total_increasing"
        assert bought["unit_of_measurement"] == "Wh"
        assert bought["state_topic"] == state and bought["value_template"] == \
            "{{ value_json.bought_today_wh }}"
        assert bought["availability_topic"] == "p2pd/alice/availability"
        assert bought["unique_id"] == "p2pd_alice_bought_today"
        assert bought["device"]["identifiers"] == ["p2pd_alice"]
        saving = ha.json(cfg.format("saving_month"))
        assert (saving["device_class"], saving["unit_of_measurement"], saving["state_class"]) == (
            "monetary", "GBP", "total")
        await ha.wait("state", lambda: ha.json(state)["sold_month_wh"] == 0)

        trade = await trade_between(alice, bob, 400)
        today = trade["slot_start"] < day_start(int(time.time())) + 86400
        # (Near midnight the trading slot is tomorrow's, near the month's end next month's.)
        await ha.wait("state after the trade", lambda: ha.json(state)["offer_wh"] == 600 and (
            ha.json(state)["sold_month_wh"] == 400 or not today))
        st = ha.json(state)
        assert st["sold_today_wh"] == (400 if today else 0)
        assert (st["offer_wh"], st["offer_price"], st["bid_wh"]) == (600, 0.09, 0)
        assert st["peers"] == 1 and st["meter"] == "none"
        assert st["bought_today_wh"] == 0

        # The broker restarts (and forgets everything retained): the daemon comes back.
        mosquitto.restart()
        ha.seen.clear()
        await ha.wait("rediscovery", lambda: cfg.format("sold_today") in ha.seen
                      and ha.seen["p2pd/alice/availability"] == b"online"
                      and ha.json(state)["offer_wh"] == 600)
        assert alice.services["mqtt"].client.connects >= 2

        # A clean stop says offline.
        alice.stop()
        await ha.wait("offline", lambda: ha.seen["p2pd/alice/availability"] == b"offline")
        bob.stop()


async def test_home_assistant_restart_gets_the_configs_again(
        home: Path, mosquitto: Any, nursery: trio.Nursery) -> None:
    ha = Retained(mosquitto.url)
    await nursery.start(ha.client.run)
    c = DaemonCommunity(home)
    cfg = c.config("carol", f'[mqtt]\nenabled = true\nbroker = "{mosquitto.url}"\n'
                            'discovery_prefix = "ha"\nbase_topic = "home/p2p"\n')
    async with trio.open_nursery() as daemons:
        carol = await daemons.start(run_daemon, cfg)
        with trio.fail_after(WAIT):
            while not carol.services["mqtt"].client.connected:
                await carol.services["mqtt"].client.wait_state_change()
        # Home Assistant announces itself; configs are published again (we see them
        # now, having subscribed only after they were first retained... and cleared).
        for s in sensors("GBP"):
            ha.client.publish(f"ha/sensor/p2pd_carol/{s.object_id}/config", b"", retain=True)
        ha.client.subscribe("ha/sensor/#")
        ha.client.publish("ha/status", b"online")
        await ha.wait("configs", lambda: all(ha.seen.get(f"ha/sensor/p2pd_carol/{s.object_id}/config")
                                             for s in sensors("GBP")))
        assert ha.json("ha/sensor/p2pd_carol/peers/config")["state_topic"] == "home/p2p/state"
        status = await carol.control.call("status")
        assert status["mqtt"]["connected"] is True
        carol.stop()


@pytest.mark.parametrize(("table", "message"), [
    ({"broker": "http://x"}, "broker"),
    ({"credentials_file": "relative/creds"}, "absolute path"),
    ({"ca_file": "/ca.pem"}, "mqtts"),
    ({"base_topic": "p2pd/#"}, "wildcards"),
    ({"interval_seconds": 1}, "interval_seconds"),
    ({"key_file": "/k", "broker": "mqtts://x"}, "cert_file"),
])
def test_bad_mqtt_sections(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mqtt(Table("mqtt", table))


def test_defaults_are_off() -> None:
    cfg = parse_mqtt(Table("mqtt", {}))
    assert cfg.enabled is False and cfg.broker == "mqtt://127.0.0.1:1883"
