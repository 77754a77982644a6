from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import trio

from meter_drivers import DriverConfigError, DsmrP1Meter, MeterUnavailable, P1Decoder, Reading
from meter_drivers.p1_decoder import _BoundedTelegramBuffer

Telegrams = dict[str, Callable[..., bytes]]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # 2017-01-02 19:20:02 CET (W) = 18:20:02 UTC
        ("v5", Reading(1483381202, 4426 + 2399, 2444, 244)),
        ("v4", Reading(1479067077, 1581123 + 1435706, 0, 2027)),
        # 2.2 has no clock: the driver's clock stamps it
        ("v2.2", Reading(1_700_000_000, 12345678 + 100001, 10010 + 1001, 1190)),
        # Fluvius e-MUCS, 2020-05-12 13:54:09 CEST (S), exporting 1.523 kW
        ("belgium", Reading(1589284449, 34 + 15758, 11, -1523)),
    ],
)
def test_variants_decode(telegrams: Telegrams, variant: str, expected: Reading) -> None:
    dec = P1Decoder(variant, clock=lambda: 1_700_000_000.7)
    assert dec.feed(telegrams[variant]()) == [expected]
    assert dec.stats.telegrams == 1


def test_byte_by_byte(telegrams: Telegrams) -> None:
    dec = P1Decoder("belgium")
    data = telegrams["belgium"]()
    out = [r for i in range(len(data)) for r in dec.feed(data[i : i + 1])]
    assert len(out) == 1


def test_bad_crc_skipped_and_counted(telegrams: Telegrams) -> None:
    good = telegrams["v5"]()
    bad = good.replace(b"1-0:1.8.1(000004.426", b"1-0:1.8.1(000009.426")
    dec = P1Decoder("v5")
    assert dec.feed(bad) == []
    assert dec.stats.crc_errors == 1
    assert [r.import_wh for r in dec.feed(good)] == [6825]


def test_half_telegram_then_full(telegrams: Telegrams) -> None:
    first = telegrams["v5"]()
    second = telegrams["v5"](ts="170102192003W", t1="000004.500")
    dec = P1Decoder("v5")
    out = dec.feed(first[: len(first) // 2]) + dec.feed(second)
    assert [r.import_wh for r in out] == [4500 + 2399]
    assert dec.stats.partial == 1
    # A tail without its start is dropped too.
    assert dec.feed(first[len(first) // 2 :]) == []
    assert len(dec.feed(telegrams["v5"](ts="170102192004W", t1="000004.500"))) == 1
    assert dec.stats.partial == 2


def test_garbage_between_telegrams(telegrams: Telegrams) -> None:
    t = telegrams["v5"]
    stream = (
        b"\x00\xff\xfe!!junk\r\n"
        + t()
        + bytes(range(256))
        + b"!0000\r\n"
        + t(ts="170102192003W", t1="000004.427")
        + b"\r\n\x80"
    )
    dec = P1Decoder("v5")
    assert [r.ts for r in dec.feed(stream)] == [1483381202, 1483381203]


def test_decreasing_and_backwards_rejected(telegrams: Telegrams) -> None:
    t = telegrams["v5"]
    dec = P1Decoder("v5")
    assert len(dec.feed(t(t1="000010.000"))) == 1
    assert dec.feed(t(ts="170102192003W", t1="000009.999")) == []
    assert dec.feed(t(ts="170102192001W", t1="000010.000")) == []  # clock backwards
    assert dec.stats.rejected == 2
    assert len(dec.feed(t(ts="170102192004W", t1="000010.001"))) == 1


def test_missing_energy_register_is_parse_error(telegrams: Telegrams) -> None:
    # Removing a line changes the CRC, so recompute it the parser's way.
    from dsmr_parser.parsers import TelegramParser

    body = telegrams["v5"]().decode().split("!")[0].replace("1-0:2.8.2(000000.000*kWh)\r\n", "") + "!"
    data = (body + f"{TelegramParser.crc16(body):04X}\r\n").encode()
    dec = P1Decoder("v5")
    assert dec.feed(data) == []
    assert dec.stats.parse_errors == 1


def test_unterminated_input_is_trimmed(telegrams: Telegrams) -> None:
    dec = P1Decoder("v5", max_buffer=4096)
    for _ in range(100):
        assert dec.feed(b"/" + b"A" * 999) == []
    assert dec.stats.trimmed_bytes >= 100 * 1000 - 4096
    assert len(dec._buffer._buffer) <= 4096  # pins dsmr-parser's internal name
    assert len(dec.feed(telegrams["v5"]())) == 1


def test_bounded_buffer_keeps_last_start() -> None:
    buf = _BoundedTelegramBuffer()
    buf.append("x" * 50 + "/ABC")
    assert buf.trim(10) == 50
    assert buf._buffer == "/ABC"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"serial_port": "/dev/ttyUSB0", "host": "h", "tcp_port": 1},
        {"host": "bridge"},
        {"serial_port": "/dev/ttyUSB0", "tcp_port": 2001},
        {"serial_port": "/dev/ttyUSB0", "variant": "v6"},
        {"serial_port": "/dev/ttyUSB0", "timeout": -1},
        {"serial_port": "/dev/ttyUSB0", "baudrate": True},
        {"serial_port": "/dev/ttyUSB0", "baud": 9600},
    ],
)
def test_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(DriverConfigError) as info:
        DsmrP1Meter(options)
    assert info.value.key in str(info.value)


async def test_tcp_bridge(telegrams: Telegrams, nursery: trio.Nursery) -> None:
    t = telegrams["belgium"]
    sent = trio.Event()

    async def bridge(stream: trio.SocketStream) -> None:
        await stream.send_all(b"garbage" + t()[:100])  # cut telegram first
        await stream.send_all(t())
        sent.set()
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, bridge, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    meter = DsmrP1Meter({"host": "127.0.0.1", "tcp_port": port, "variant": "belgium", "timeout": 5})
    reading = await meter.read()
    assert reading.export_wh == 11
    await sent.wait()
    # The bridge closed the connection: unavailable, then a reconnect works.
    with pytest.raises(MeterUnavailable):
        await meter.read()
    assert meter.decoder.guard.last == reading
    await meter.aclose()


async def test_tcp_silent_bridge_times_out(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    meter = DsmrP1Meter({"host": "127.0.0.1", "tcp_port": port, "timeout": 0.2})
    with pytest.raises(MeterUnavailable, match="no valid P1 telegram"):
        await meter.read()
    await meter.aclose()
    nursery.cancel_scope.cancel()


async def test_tcp_refused() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        meter = DsmrP1Meter({"host": "127.0.0.1", "tcp_port": port, "timeout": 5})
        with pytest.raises(MeterUnavailable):
            await meter.read()


async def test_serial_pty(telegrams: Telegrams) -> None:
    master, slave = os.openpty()
    try:
        meter = DsmrP1Meter({"serial_port": os.ttyname(slave), "variant": "v5", "timeout": 10})
        await meter.connect()  # opening flushes input: write only after it
        t = telegrams["v5"]
        os.write(master, b"\x00\x13junk" + t()[:200])
        os.write(master, t(ts="170102192003W", t1="000004.500"))
        reading = await meter.read()
        assert reading.import_wh == 4500 + 2399
        assert meter.stats.telegrams == 1
        await meter.aclose()
    finally:
        os.close(master)
        os.close(slave)


async def test_serial_missing_port(tmp_path: object) -> None:
    meter = DsmrP1Meter({"serial_port": "/nonexistent/ttyP1", "timeout": 5})
    with pytest.raises(MeterUnavailable, match="ttyP1"):
        await meter.read()


async def test_timeout_message_counts_refused_telegrams(
    telegrams: Telegrams, nursery: trio.Nursery
) -> None:
    t = telegrams["v5"]
    first_read = trio.Event()

    async def bridge(stream: trio.SocketStream) -> None:
        await stream.send_all(t(t1="000100.000"))
        await first_read.wait()  # so the refusals fall into the second read
        await stream.send_all(t(ts="170102192003W", t1="000050.000") + b"/x!0000\r\n")
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, bridge, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    meter = DsmrP1Meter({"host": "127.0.0.1", "tcp_port": port, "timeout": 0.5})
    await meter.read()
    first_read.set()
    with pytest.raises(MeterUnavailable, match="1 refused values, 1 CRC errors, 0 unparsable"):
        await meter.read()
    await meter.aclose()
    nursery.cancel_scope.cancel()
