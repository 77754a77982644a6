from __future__ import annotations

import asyncio
import functools
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from meter_drivers import BadReading, MeterUnavailable, MonitoredMeter, SunSpecMeter
from meter_drivers.health import HealthState
from meter_drivers.sunspec import decode_int_model, energy_step_wh


def _text(s: str, regs: int) -> list[int]:
    raw = s.encode().ljust(regs * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _common() -> list[int]:
    data = _text("ACME Meters", 16) + _text("M3", 16) + _text("", 8) + _text("1.0", 8)
    data += _text("SN-4711", 16) + [1, 0x8000]
    return [1, 65, *data[:65]]


def _u32(v: int) -> list[int]:
    return [v >> 16, v & 0xFFFF]


def _f32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def int_model(import_raw: int, export_raw: int, e_sf: int, w: int, w_sf: int) -> list[int]:
    d = [0] * 105
    d[16], d[20] = w & 0xFFFF, w_sf & 0xFFFF
    d[36:38], d[44:46], d[52] = _u32(export_raw), _u32(import_raw), e_sf & 0xFFFF
    return [203, 105, *d]


def float_model(import_wh: float, export_wh: float, w: float) -> list[int]:
    d = [0] * 124
    d[26:28], d[58:60], d[66:68] = _f32(w), _f32(export_wh), _f32(import_wh)
    return [213, 124, *d]


def sunspec_map(*models: list[int]) -> list[int]:
    regs = [0x5375, 0x6E53, *_common()]
    for m in models:
        regs += m
    return regs + [0xFFFF, 0]


class ModbusServer:
    """pymodbus TCP server on 127.0.0.1:0 with its asyncio loop in a thread."""

    def __init__(self, registers: list[int]) -> None:
        from pymodbus.datastore import (
            ModbusDeviceContext,
            ModbusSequentialDataBlock,
            ModbusServerContext,
        )

        # The block at 40001 answers protocol address 40000 (pymodbus offset).
        block = ModbusSequentialDataBlock(40001, registers)
        self.context = ModbusServerContext(devices=ModbusDeviceContext(hr=block), single=True)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer

        self.server = ModbusTcpServer(self.context, address=("127.0.0.1", 0))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        self._ready.set()
        await self.server.serving

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def set(self, address: int, values: list[int]) -> None:
        """Write holding registers through the server, as a device would change."""
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2, retries=0)
        try:
            assert client.connect()
            assert not client.write_registers(address, values, device_id=1).isError()
        finally:
            client.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop).result(10)
            self._thread.join(10)
        self._loop.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ModbusServer]:
    regs = getattr(request, "param", None) or sunspec_map(int_model(1234567, 89012, -1, 1520, 0))
    srv = ModbusServer(regs)
    srv.start()
    yield srv
    srv.stop()


def _meter(port: int, **extra: Any) -> SunSpecMeter:
    return SunSpecMeter({"host": "127.0.0.1", "port": port, "timeout": 2, "clock": lambda: 1_750_000_000, **extra})


async def test_model_203_with_scale_factors(server: ModbusServer) -> None:
    now = [1_750_000_000]
    meter = _meter(server.port, clock=lambda: now[0])
    r = await meter.read()
    # TotWh_SF = -1: raw 1234567 -> 123456.7 Wh -> 123457 (half up); W_SF = 0.
    assert (r.ts, r.import_wh, r.export_wh, r.power_w) == (1_750_000_000, 123457, 8901, 1520)
    assert meter.info is not None and meter.info.manufacturer == "ACME Meters"
    assert meter.info.serial == "SN-4711" and meter.info.model == 203
    # Energy grows: the cached layout is reused. 76.5 kWh cannot arrive in
    # no time (ReadingGuard), but can in two hours (38 kW).
    model_data = 40000 + 2 + 67 + 2
    await trio.to_thread.run_sync(server.set, model_data + 44, _u32(2_000_000))  # SF -1
    with pytest.raises(BadReading, match="grew"):
        await meter.read()
    now[0] += 7200
    assert (await meter.read()).import_wh == 200000
    await meter.aclose()


@pytest.mark.parametrize(
    "server", [sunspec_map([64000, 3, 1, 2, 3], float_model(9_876_543.0, 1_000.5, -2300.4))], indirect=True
)
async def test_model_213_float_after_unknown_model(server: ModbusServer) -> None:
    meter = _meter(server.port)
    r = await meter.read()
    await meter.aclose()
    assert (r.import_wh, r.export_wh, r.power_w) == (9_876_543, 1_000, -2300)


@pytest.mark.parametrize("server", [[0x1234, 0x5678] + [0] * 10], indirect=True)
async def test_no_sunspec_marker(server: ModbusServer) -> None:
    meter = _meter(server.port)
    with pytest.raises(BadReading, match="marker"):
        await meter.read()
    await meter.aclose()


@pytest.mark.parametrize("server", [sunspec_map()], indirect=True)
async def test_no_meter_model(server: ModbusServer) -> None:
    meter = _meter(server.port)
    with pytest.raises(BadReading, match="no SunSpec meter model"):
        await meter.read()
    await meter.aclose()


async def test_decreasing_energy_rejected(server: ModbusServer) -> None:
    meter = _meter(server.port)
    await meter.read()
    await trio.to_thread.run_sync(server.set, 40000 + 2 + 67 + 2 + 44, [0, 5])
    with pytest.raises(BadReading, match="backwards"):
        await meter.read()
    assert meter.guard.rejected == 1
    await meter.aclose()


async def test_server_stops_then_monitored_retries(server: ModbusServer) -> None:
    monitored = MonitoredMeter(_meter(server.port), initial_delay=0.01, max_delay=0.01, max_attempts=2)
    await monitored.read()
    assert monitored.healthy
    server.stop()
    with pytest.raises(MeterUnavailable):
        await monitored.read()
    assert monitored.health.state is HealthState.RETRYING
    assert monitored.health.attempt == 2
    assert not monitored.healthy
    await monitored.aclose()


async def test_device_that_never_answers(nursery: trio.Nursery) -> None:
    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    meter = SunSpecMeter({"host": "127.0.0.1", "port": port, "timeout": 0.2})
    with pytest.raises(MeterUnavailable):
        await meter.read()
    await meter.aclose()
    nursery.cancel_scope.cancel()


def test_not_implemented_power_and_sf() -> None:
    d = [0] * 105
    d[16], d[20] = 0x8000, 0
    d[36:38], d[44:46], d[52] = [0, 10], [0, 20], 3
    assert decode_int_model(d) == (20_000, 10_000, None)
    d[52] = 0x8000
    with pytest.raises(BadReading):
        decode_int_model(d)


async def test_guard_limits_power_and_steps(server: ModbusServer) -> None:
    model_data = 40000 + 2 + 67 + 2
    now = [1_750_000_000]
    meter = _meter(server.port, clock=lambda: now[0], max_power_w=20_000)
    await meter.read()
    # 1520 W * 10**2 (W_SF 2) = 152 kW: more than the connection carries.
    await trio.to_thread.run_sync(server.set, model_data + 20, [2])
    with pytest.raises(BadReading, match="power"):
        await meter.read()
    await trio.to_thread.run_sync(server.set, model_data + 20, [0])
    # TotWh_SF 3: registers count kWh, so they move 1000 Wh at once. Raw
    # 1234568 after 1234567 in 10 s is one step, not 360 kW.
    await trio.to_thread.run_sync(server.set, model_data + 52, [3])
    await meter.aclose()
    meter = _meter(server.port, clock=lambda: now[0])
    first = await meter.read()
    await trio.to_thread.run_sync(server.set, model_data + 44, _u32(1234568))
    now[0] += 10
    assert (await meter.read()).import_wh == first.import_wh + 1000
    await trio.to_thread.run_sync(server.set, model_data + 44, _u32(1234573))  # 5 steps
    now[0] += 10
    with pytest.raises(BadReading, match="grew"):
        await meter.read()
    await meter.aclose()


def test_energy_step() -> None:
    d = [0] * 124
    d[66:68] = _f32(2.0**24)
    assert energy_step_wh(213, d) == 2
    d[66:68] = _f32(1000.0)
    assert energy_step_wh(213, d) == 1
    i = [0] * 105
    i[52] = 2
    assert energy_step_wh(203, i) == 100
    i[52] = 0xFFFE  # -2
    assert energy_step_wh(203, i) == 1
