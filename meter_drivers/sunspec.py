"""SunSpec meters and inverters over Modbus TCP (pymodbus sync client in a thread).

Options (``driver = "sunspec"``): ``host`` (str, required), ``port`` (int,
default 502), ``device_id`` (int 1..247, default 1), ``base_address`` (int,
default 40000, the protocol address of the ``SunS`` marker; some devices use
0 or 50000), ``timeout`` (float s, default 3), ``max_power_w`` (int W,
default 55,200: the :class:`~meter_drivers.base.ReadingGuard` bound on
reported power and on how fast the registers may grow).

Registers read (protocol addresses are 0-based; "base" is ``base_address``):

- base+0..1: ``0x5375 0x6E53`` ("SunS"), else :class:`BadReading`.
- Then the model chain from base+2: each model is ``ID, L`` followed by ``L``
  registers; the walk stops at ID 0xFFFF, after 32 models or past 3000
  registers. Model 1 (common) gives ``Mn`` (16 registers) and ``SN`` (16
  registers at offset 48) for :attr:`SunSpecMeter.info`.
- The first meter model found, offsets counted from the first data register
  after ``ID, L``:

  * 201-204 (integer + scale factor, L=105): ``W`` int16 at 16, ``W_SF`` at 20;
    ``TotWhExp`` acc32 at 36-37, ``TotWhImp`` acc32 at 44-45, ``TotWh_SF`` at 52.
    Value = raw * 10**SF, rounded to whole Wh / W.
  * 211-214 (float32, L=124): ``W`` at 26-27, ``TotWhExp`` at 58-59,
    ``TotWhImp`` at 66-67, big-endian IEEE 754, no scale factors. float32
    holds whole Wh exactly only up to 16.7 MWh; beyond that readings step by
    2 Wh or more.

Not-implemented markers (SF 0x8000, int16 0x8000, float NaN) give
``power_w=None``; on an energy register they give :class:`BadReading`. The
reading is stamped with ``clock()`` (option, default ``time.time``): SunSpec
meter models carry no timestamp. Power sign follows SunSpec meters: positive
while importing from the grid.

Every reading passes :class:`~meter_drivers.base.ReadingGuard` with the
register's step: 10**SF Wh for a positive energy scale factor, and for
float32 the spacing of float32 values at that size (2 Wh above 16.7 MWh), so
a register that moves in coarse steps is not mistaken for a jump.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import trio

from meter_drivers._options import Option, in_range, max_power_option, positive, validate
from meter_drivers.base import BadReading, MeterUnavailable, Reading, ReadingGuard

OPTIONS = {
    "host": Option("str"),
    "port": Option("int", 502, in_range(1, 65535)),
    "device_id": Option("int", 1, in_range(0, 247)),
    "base_address": Option("int", 40000, in_range(0, 65535 - 200)),
    "timeout": Option("float", 3.0, positive),
    "clock": Option("callable", time.time),
    "max_power_w": max_power_option(),
}

SUNS = (0x5375, 0x6E53)
INT_METERS = (201, 202, 203, 204)
FLOAT_METERS = (211, 212, 213, 214)
_END = 0xFFFF
_MAX_MODELS = 32
_MAX_SPAN = 3000
_NI16 = 0x8000


@dataclass(frozen=True)
class _Layout:
    model: int
    address: int  # first data register after ID, L
    length: int


@dataclass(frozen=True)
class SunSpecInfo:
    manufacturer: str
    serial: str
    model: int


def _text(regs: list[int]) -> str:
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def _int16(r: int) -> int:
    return r - 0x10000 if r & 0x8000 else r


def _float32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def decode_int_model(regs: list[int]) -> tuple[int, int, int | None]:
    """(import_wh, export_wh, power_w) from a 201-204 model's data registers."""
    if len(regs) < 53:
        raise BadReading(f"meter model too short ({len(regs)} registers)")
    e_sf = regs[52]
    if e_sf == _NI16:
        raise BadReading("TotWh_SF not implemented")
    exp = (regs[36] << 16) | regs[37]
    imp = (regs[44] << 16) | regs[45]
    power: int | None = None
    if regs[16] != _NI16 and regs[20] != _NI16:
        power = _scaled(_int16(regs[16]), _int16(regs[20]))
    return _scaled(imp, _int16(e_sf)), _scaled(exp, _int16(e_sf)), power


def decode_float_model(regs: list[int]) -> tuple[int, int, int | None]:
    """(import_wh, export_wh, power_w) from a 211-214 model's data registers."""
    if len(regs) < 68:
        raise BadReading(f"meter model too short ({len(regs)} registers)")
    exp, imp, w = _float32(regs[58], regs[59]), _float32(regs[66], regs[67]), _float32(
        regs[26], regs[27]
    )
    if not (math.isfinite(exp) and math.isfinite(imp)):
        raise BadReading("energy register not implemented or not finite")
    power = round(w) if math.isfinite(w) else None
    return round(imp), round(exp), power


def energy_step_wh(model: int, regs: list[int]) -> int:
    """How many Wh the energy registers of a meter model move at once (>= 1).

    ``regs`` are the model's data registers, already decoded without error.
    """
    if model in INT_METERS:
        return int(10 ** max(_int16(regs[52]), 0))
    largest = max(abs(_float32(regs[58], regs[59])), abs(_float32(regs[66], regs[67])))
    # float32 keeps 24 significant bits: at 2**e <= v < 2**(e+1) it steps by 2**(e-23).
    return 1 << max(math.frexp(largest)[1] - 24, 0)


def _scaled(raw: int, sf: int) -> int:
    if not -10 <= sf <= 10:
        raise BadReading(f"scale factor {sf} out of range")
    # Exact integer arithmetic; round half up on negative scale factors.
    if sf >= 0:
        return raw * int(10**sf)
    div = int(10**-sf)
    return (raw * 2 + div) // (2 * div)


class SunSpecMeter:
    """Reads a SunSpec meter model (201-204 or 211-214) over Modbus TCP.

    The model map is discovered on the first successful read and cached.
    ``read()`` raises :class:`MeterUnavailable` when the device does not
    connect or answer within ``timeout``, and :class:`BadReading` for a map
    without "SunS" or a meter model, or implausible values.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._opts = validate(OPTIONS, options)
        self._client: Any = None
        self._layout: _Layout | None = None
        self.info: SunSpecInfo | None = None
        self.guard = ReadingGuard(max_power_w=self._opts["max_power_w"])
        # A worker thread abandoned on timeout may still be running; it checks
        # the generation before publishing a client or a layout.
        self._generation = 0

    async def read(self) -> Reading:
        timeout = self._opts["timeout"]
        try:
            with trio.fail_after(timeout * 2):
                imp, exp, power, step = await trio.to_thread.run_sync(
                    self._read_blocking, self._generation, abandon_on_cancel=True
                )
        except trio.TooSlowError as exc:
            self._drop_client()
            raise MeterUnavailable(f"SunSpec device did not answer within {timeout} s") from exc
        except MeterUnavailable:
            self._drop_client()
            raise
        ts = int(self._opts["clock"]())
        reading = Reading(ts=ts, import_wh=imp, export_wh=exp, power_w=power)
        return self.guard.check(reading, step_wh=step)

    # Runs in a worker thread: only blocking pymodbus calls and pure decoding.
    def _read_blocking(self, generation: int) -> tuple[int, int, int | None, int]:
        client = self._connect(generation)
        layout = self._layout
        if layout is None:
            layout = self._discover(client)
            if generation == self._generation:
                self._layout = layout
        regs = self._registers(client, layout.address, min(layout.length, 68))
        decode = decode_int_model if layout.model in INT_METERS else decode_float_model
        return (*decode(regs), energy_step_wh(layout.model, regs))

    def _connect(self, generation: int) -> Any:
        from pymodbus.client import ModbusTcpClient

        if self._client is None:
            client = ModbusTcpClient(
                self._opts["host"],
                port=self._opts["port"],
                timeout=self._opts["timeout"],
                retries=0,
            )
            if not client.connect():
                client.close()
                raise MeterUnavailable(
                    f"cannot connect to {self._opts['host']}:{self._opts['port']}"
                )
            if generation != self._generation:
                client.close()
                raise MeterUnavailable("read abandoned")
            self._client = client
        return self._client

    def _registers(self, client: Any, address: int, count: int) -> list[int]:
        from pymodbus.exceptions import ModbusException

        try:
            resp = client.read_holding_registers(
                address, count=count, device_id=self._opts["device_id"]
            )
        except (ModbusException, OSError) as exc:
            raise MeterUnavailable(f"Modbus read at {address}: {exc}") from exc
        if resp.isError():
            raise BadReading(f"Modbus exception reading {count} registers at {address}: {resp}")
        regs = list(resp.registers)
        if len(regs) < count:
            raise BadReading(f"short Modbus answer at {address}")
        return regs

    def _discover(self, client: Any) -> _Layout:
        base = self._opts["base_address"]
        if tuple(self._registers(client, base, 2)) != SUNS:
            raise BadReading(f"no SunSpec marker at {base}")
        addr = base + 2
        manufacturer = serial = ""
        for _ in range(_MAX_MODELS):
            if addr + 2 > base + _MAX_SPAN:
                break
            model, length = self._registers(client, addr, 2)
            if model == _END:
                break
            if model == 1 and length >= 64:
                common = self._registers(client, addr + 2, 64)
                manufacturer, serial = _text(common[0:16]), _text(common[48:64])
            if (model in INT_METERS and length >= 53) or (model in FLOAT_METERS and length >= 68):
                self.info = SunSpecInfo(manufacturer, serial, model)
                return _Layout(model, addr + 2, length)
            addr += 2 + length
        raise BadReading("no SunSpec meter model (201-204, 211-214) in the map")

    def _drop_client(self) -> None:
        self._generation += 1
        client, self._client = self._client, None
        self._layout = None
        if client is not None:
            # Closing the socket also unblocks an abandoned worker thread.
            client.close()

    async def aclose(self) -> None:
        self._drop_client()
