"""paho_trio against a real mosquitto: publish, subscribe, will, reconnect, refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from p2pd_test_helpers import Mosquitto

from paho_trio import Broker, Message, MqttClient, MqttUnavailable, Will, parse_broker_url

WAIT = 10.0


def broker_of(m: Any) -> Broker:
    host, port, tls = parse_broker_url(m.url)
    return Broker(host, port, tls)


class Inbox:
    """Messages received, and a way to wait for one that matches."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = trio.Event()

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_for(self, topic: str, payload: bytes | None = None) -> Message:
        with trio.fail_after(WAIT):
            while True:
                for m in self.messages:
                    if m.topic == topic and (payload is None or m.payload == payload):
                        return m
                await self._arrived.wait()


async def wait_connected(client: MqttClient, connects: int = 1) -> None:
    with trio.fail_after(WAIT):
        while client.connects < connects or not client.connected:
            await client.wait_state_change()


async def test_publish_and_subscribe_through_the_broker(mosquitto: Any, nursery: trio.Nursery) -> None:
    inbox = Inbox()
    sub = MqttClient(broker_of(mosquitto), client_id="sub", on_message=inbox)
    sub.subscribe("t/#")
    pub = MqttClient(broker_of(mosquitto), client_id="pub")
    await nursery.start(sub.run)
    await nursery.start(pub.run)
    await wait_connected(sub)
    await wait_connected(pub)
    assert pub.publish("t/a", b"hello", retain=True)
    # (Retained or not: the SUBSCRIBE may reach the broker after the PUBLISH.)
    got = await inbox.wait_for("t/a")
    assert got.payload == b"hello"
    # A retained message reaches a subscriber that comes later.
    late_inbox = Inbox()
    late = MqttClient(broker_of(mosquitto), client_id="late", on_message=late_inbox)
    late.subscribe("t/a")
    await nursery.start(late.run)
    assert (await late_inbox.wait_for("t/a", b"hello")).retain


async def test_will_on_a_clean_stop_and_on_a_vanished_client(mosquitto: Any, nursery: trio.Nursery) -> None:
    inbox = Inbox()
    watcher = MqttClient(broker_of(mosquitto), client_id="watch", on_message=inbox)
    watcher.subscribe("avail/#")
    await nursery.start(watcher.run)
    await wait_connected(watcher)
    # A clean stop: run() publishes the will itself, then disconnects.
    with trio.CancelScope() as scope:
        client = MqttClient(broker_of(mosquitto), client_id="a", will=Will("avail/a", b"offline"))
        client.on_connect = lambda: client.publish("avail/a", b"online", retain=True) and None
        async with trio.open_nursery() as inner:
            await inner.start(client.run)
            await inbox.wait_for("avail/a", b"online")
            scope.cancel()
    await inbox.wait_for("avail/a", b"offline")
    assert not client.connected
    # Vanishing without DISCONNECT: the broker publishes the will.
    b = MqttClient(broker_of(mosquitto), client_id="b", will=Will("avail/b", b"gone"))
    await b.connect()
    with trio.fail_after(WAIT):
        await b.pump(until=lambda: b.connected)
    sock = b._client.socket() if b._client else None
    assert sock is not None
    sock.close()  # the process "crashed": no DISCONNECT
    await inbox.wait_for("avail/b", b"gone")
    b._client = None


async def test_reconnects_after_the_broker_restarts(mosquitto: Any, nursery: trio.Nursery) -> None:
    connects: list[int] = []
    client = MqttClient(broker_of(mosquitto), client_id="r", keepalive=5, min_delay=0.05, max_delay=0.2)
    client.on_connect = lambda: connects.append(client.connects)
    await nursery.start(client.run)
    await wait_connected(client)
    mosquitto.stop()
    with trio.fail_after(WAIT):
        while client.connected:
            await client.wait_state_change()
    assert client.last_error is not None
    mosquitto.start()
    await wait_connected(client, 2)
    assert connects == [1, 2] and client.failures >= 1


async def test_an_unreachable_broker_is_unavailable(tmp_path: Path) -> None:
    m = Mosquitto(str(tmp_path))  # a free port, never started
    client = MqttClient(broker_of(m), client_id="x")
    with pytest.raises(MqttUnavailable, match="127.0.0.1"):
        await client.connect()
    with pytest.raises(MqttUnavailable, match="not connected"):
        await client.pump()


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto that lets in only alice with password s3cret."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "alice", "s3cret"], check=True,
                   capture_output=True)
    os.chmod(pwfile, 0o644)
    m = Mosquitto(str(tmp_path), ("allow_anonymous false", f"password_file {pwfile}"))
    m.start()
    yield m
    m.stop()


async def test_credentials_from_a_file(tmp_path: Path, password_broker: Mosquitto) -> None:
    good = tmp_path / "good"
    good.write_text("alice\ns3cret\n")
    good.chmod(0o600)
    bad = tmp_path / "bad"
    bad.write_text("alice\nwrong\n")
    bad.chmod(0o600)
    ok = MqttClient(broker_of(password_broker), client_id="ok", credentials_file=str(good))
    await ok.connect()
    with trio.fail_after(WAIT):
        await ok.pump(until=lambda: ok.connected)
    refused = MqttClient(broker_of(password_broker), client_id="no", credentials_file=str(bad))
    await refused.connect()
    with trio.fail_after(WAIT), pytest.raises(MqttUnavailable, match="refused"):
        await refused.pump()
    await ok.aclose()
    bad.chmod(0o644)
    with pytest.raises(MqttUnavailable, match="readable by everyone"):
        await refused.connect()


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://hass.local") == ("hass.local", 1883, False)
    assert parse_broker_url("mqtts://10.0.0.2:8884") == ("10.0.0.2", 8884, True)
    for bad in ("http://x", "mqtt://", "mqtt://u:p@x", "mqtt://x/y", "mqtt://x:99999"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)
