"""DSMR P1 port smart meters: the Netherlands (DSMR 2.2, 4, 5) and Belgium (e-MUCS).

Options (``[meter]`` table with ``driver = "dsmr_p1"``):

- ``serial_port`` (str): the P1 cable, e.g. ``"/dev/ttyUSB0"``; or
- ``host`` (str) and ``tcp_port`` (int): a TCP bridge such as ser2net.
  Exactly one of ``serial_port`` and ``host`` is required.
- ``variant``: ``"v2.2"``, ``"v4"``, ``"v5"`` (default) or ``"belgium"``.
- ``baudrate`` (int): default 9600 (7E1) for v2.2, 115200 (8N1) otherwise.
- ``timeout`` (float, s, default 30): no valid telegram in this long means
  the meter is unavailable. DSMR 5 and e-MUCS send every second, v2.2/v4
  every ten seconds.
- ``max_buffer`` (int, bytes, default 16384): buffered bytes without a
  complete telegram are trimmed past this size.
- ``clock`` (callable returning unix seconds): used only for DSMR 2.2, whose
  telegrams carry no timestamp. Defaults to ``time.time``.
- ``max_power_w`` (int W, default 55,200 = 3 x 80 A x 230 V, the largest
  connection DSMR serves): readings reporting more power, or whose
  registers grew faster than this, are refused
  (:class:`~meter_drivers.base.ReadingGuard`).

Mapping: import = 1-0:1.8.1 + 1-0:1.8.2 (kWh, three decimals, so exact Wh),
export = 1-0:2.8.1 + 1-0:2.8.2, power = 1-0:1.7.0 - 1-0:2.7.0 (kW), time =
0-0:1.0.0 (the meter's clock, local time with S/W DST flag, converted to UTC
by dsmr-parser).

Decoding (bytes to readings, no I/O) is :class:`~meter_drivers.p1_decoder.P1Decoder`,
which also documents what counts as a bad telegram. Bad input is never fatal:
it is counted in :class:`P1Stats` and skipped.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from meter_drivers._options import Option, in_range, max_power_option, one_of, positive, validate
from meter_drivers.base import DriverConfigError, MeterUnavailable, Reading
from meter_drivers.p1_decoder import SPECS, P1Decoder, P1Stats

OPTIONS = {
    "serial_port": Option("str", None),
    "host": Option("str", None),
    "tcp_port": Option("int", None, in_range(1, 65535)),
    "variant": Option("str", "v5", one_of(*SPECS)),
    "baudrate": Option("int", None, positive),
    "timeout": Option("float", 30.0, positive),
    "max_buffer": Option("int", 16384, in_range(1024, 1 << 20)),
    "clock": Option("callable", time.time),
    "max_power_w": max_power_option(),
}

_READ_CHUNK = 4096


class DsmrP1Meter:
    """A P1 port read over serial (pyserial in a thread) or TCP (ser2net).

    Connects lazily on the first ``read()`` and again after a failure.
    ``read()`` returns the newest reading decoded from the bytes received so
    far; it raises :class:`MeterUnavailable` if the port cannot be opened, the
    connection closes or no valid telegram arrives within ``timeout``.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        opts = validate(OPTIONS, options)
        if (opts["serial_port"] is None) == (opts["host"] is None):
            raise DriverConfigError("serial_port", "set exactly one of serial_port or host")
        if opts["host"] is not None and opts["tcp_port"] is None:
            raise DriverConfigError("tcp_port", "is required with host")
        if opts["serial_port"] is not None and opts["tcp_port"] is not None:
            raise DriverConfigError("tcp_port", "only applies with host")
        self._opts = opts
        self.decoder = P1Decoder(
            opts["variant"],
            max_buffer=opts["max_buffer"],
            clock=opts["clock"],
            max_power_w=opts["max_power_w"],
        )
        self._stream: trio.abc.Stream | None = None
        self._serial: Any = None

    @property
    def stats(self) -> P1Stats:
        return self.decoder.stats

    async def read(self) -> Reading:
        try:
            stats = self.decoder.stats
            before = (stats.rejected, stats.crc_errors, stats.parse_errors)
            with trio.fail_after(self._opts["timeout"]):
                while True:
                    readings = self.decoder.feed(await self._receive())
                    if readings:
                        return readings[-1]
        except trio.TooSlowError as exc:
            await self._disconnect()
            # Telegrams that arrive but are all refused (a swapped meter, a
            # bad baseline) look like silence unless the message says so.
            rejected, crc, unparsable = (
                now - then
                for now, then in zip(
                    (stats.rejected, stats.crc_errors, stats.parse_errors), before, strict=True
                )
            )
            raise MeterUnavailable(
                f"no valid P1 telegram within {self._opts['timeout']} s (meanwhile"
                f" {rejected} refused values, {crc} CRC errors, {unparsable} unparsable)"
            ) from exc
        except MeterUnavailable:
            await self._disconnect()
            raise

    async def connect(self) -> None:
        """Open the port or connection now (``read()`` otherwise does it).

        pyserial flushes the input buffer when it opens a port. Raises
        :class:`MeterUnavailable`.
        """
        if self._opts["host"] is not None:
            await self._connect_tcp()
        else:
            await self._connect_serial()

    async def _receive(self) -> bytes:
        if self._opts["host"] is not None:
            return await self._receive_tcp()
        return await self._receive_serial()

    async def _connect_tcp(self) -> trio.abc.Stream:
        host, port = self._opts["host"], self._opts["tcp_port"]
        if self._stream is None:
            try:
                self._stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise MeterUnavailable(f"P1 bridge {host}:{port}: {exc}") from exc
        return self._stream

    async def _receive_tcp(self) -> bytes:
        host, port = self._opts["host"], self._opts["tcp_port"]
        stream = await self._connect_tcp()
        try:
            data = await stream.receive_some(_READ_CHUNK)
        except (OSError, trio.BrokenResourceError) as exc:
            raise MeterUnavailable(f"P1 bridge {host}:{port}: {exc}") from exc
        if not data:
            raise MeterUnavailable(f"P1 bridge {host}:{port} closed the connection")
        return bytes(data)

    async def _connect_serial(self) -> Any:
        import serial  # pyserial; imported here so TCP-only setups never touch it

        if self._serial is None:
            try:
                self._serial = await trio.to_thread.run_sync(self._open_serial, serial)
            except (OSError, serial.SerialException) as exc:
                path = self._opts["serial_port"]
                raise MeterUnavailable(f"P1 serial port {path}: {exc}") from exc
        return self._serial

    async def _receive_serial(self) -> bytes:
        import serial

        port = await self._connect_serial()
        try:
            # Short serial timeout: the thread returns every 0.5 s so that
            # cancellation (which waits for the thread) stays prompt.
            return await trio.to_thread.run_sync(_read_available, port)
        except (OSError, serial.SerialException) as exc:
            path = self._opts["serial_port"]
            raise MeterUnavailable(f"P1 serial port {path}: {exc}") from exc

    def _open_serial(self, serial: Any) -> Any:
        v22 = self._opts["variant"] == "v2.2"
        return serial.Serial(
            self._opts["serial_port"],
            baudrate=self._opts["baudrate"] or (9600 if v22 else 115200),
            bytesize=serial.SEVENBITS if v22 else serial.EIGHTBITS,
            parity=serial.PARITY_EVEN if v22 else serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0.5,
        )

    async def _disconnect(self) -> None:
        stream, self._stream = self._stream, None
        port, self._serial = self._serial, None
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if port is not None:
            port.close()

    async def aclose(self) -> None:
        await self._disconnect()


def _read_available(port: Any) -> bytes:
    data: bytes = port.read(1)
    if data:
        data += port.read(min(port.in_waiting, _READ_CHUNK))
    return data
