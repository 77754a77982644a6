"""Target: the P1 (DSMR) telegram path, bytes to readings, as the dsmr_p1 driver runs it.

Input layout: the first byte chooses the variant (low two bits: v2.2, v4, v5,
belgium) and where the rest is cut into two ``feed`` calls (high six bits, in
64ths), so framing across reads is fuzzed too. The rest goes to a fresh
``meter_drivers.P1Decoder``: dsmr-parser's buffer and parser, then
``reading_from_telegram`` and the ``ReadingGuard``, with no port and no trio.

Documented outcome (meter_drivers/p1_decoder.py): ``feed`` returns a list of
readings, empty when it needs more data or skipped bad telegrams (counted in
``P1Stats``, the driver's ``BadReading`` path); it raises nothing. A finding is
any exception, a reading outside the guard's bounds (register width, power,
backwards, a jump the connection cannot carry), counters that disagree with
the readings, or an input that takes more than a second (issue 17: one
reading took 6.3 s to convert).
"""

from __future__ import annotations

import logging
import time

from dsmr_parser.parsers import TelegramParser

from meter_drivers import DEFAULT_MAX_POWER_W, P1Decoder, Reading, ReadingGuard
from meter_drivers.p1_decoder import MAX_READING_WH

VARIANTS = ("v2.2", "v4", "v5", "belgium")
CLOCK = 1_700_000_000.0
MAX_BUFFER = 2048  # below the engine's 4096-byte inputs, so trimming is reached
SLOW_SECONDS = 1.0

# dsmr-parser logs each line it cannot parse at ERROR, with a traceback; over a
# million inputs that floods run.py's captured stderr. (``disabled`` is per
# logger, not inherited: it must be the one that logs.)
_LIB_LOG = logging.getLogger("dsmr_parser.parsers")


def target(data: bytes) -> None:
    if not data:
        return
    variant = VARIANTS[data[0] & 3]
    body = data[1:]
    cut = len(body) * (data[0] >> 2) // 64
    decoder = P1Decoder(variant, max_buffer=MAX_BUFFER, clock=lambda: CLOCK)
    was_disabled, _LIB_LOG.disabled = _LIB_LOG.disabled, True
    try:
        start = time.perf_counter()
        readings = decoder.feed(body[:cut]) + decoder.feed(body[cut:])
        elapsed = time.perf_counter() - start
    finally:
        _LIB_LOG.disabled = was_disabled
    if elapsed > SLOW_SECONDS:
        raise AssertionError(f"{variant}: {len(data)} bytes took {elapsed:.2f} s")
    _check(readings, decoder)


def _check(readings: list[Reading], decoder: P1Decoder) -> None:
    """The guarantees a settled reading relies on, checked independently of the guard."""
    if decoder.stats.telegrams != len(readings):
        raise AssertionError(f"{len(readings)} readings, stats say {decoder.stats.telegrams}")
    reference = ReadingGuard(max_wh=MAX_READING_WH, max_power_w=DEFAULT_MAX_POWER_W)
    for r in readings:
        if not isinstance(r, Reading) or not all(
            type(v) is int for v in (r.ts, r.import_wh, r.export_wh)
        ):
            raise AssertionError(f"not a reading of ints: {r!r:.200}")
        reference.check(r)  # BadReading here is a finding: the decoder let it through


def _with_crc(body: str) -> bytes:
    text = body.replace("\n", "\r\n") + "!"
    return (text + f"{TelegramParser.crc16(text):04X}\r\n").encode("latin-1")


V5 = """/ISk5\\2MT382-1000

1-3:0.2.8(50)
0-0:1.0.0({ts})
0-0:96.1.1(4B384547303034303436333935353037)
1-0:1.8.1({t1}*kWh)
1-0:1.8.2(000002.399*kWh)
1-0:2.8.1(000002.444*kWh)
1-0:2.8.2(000000.000*kWh)
0-0:96.14.0(0002)
1-0:1.7.0(00.244*kW)
1-0:2.7.0(00.000*kW)
0-0:96.7.21(00013)
0-0:96.7.9(00000)
1-0:99.97.0(1)(0-0:96.7.19)(101208152415W)(0000000240*s)
1-0:32.32.0(00000)
0-0:96.13.0()
1-0:32.7.0(0230.0*V)
1-0:31.7.0(001*A)
1-0:21.7.0(00.244*kW)
1-0:22.7.0(00.000*kW)
0-1:24.1.0(003)
0-1:96.1.0(3232323241424344313233343536373839)
0-1:24.2.1(170102161005W)(00000.107*m3)
"""

V4 = """/KFM5KAIFA-METER

1-3:0.2.8(42)
0-0:1.0.0(161113205757W)
0-0:96.1.1(3960221976967177082151037881335713)
1-0:1.8.1(001581.123*kWh)
1-0:1.8.2(001435.706*kWh)
1-0:2.8.1(000000.000*kWh)
1-0:2.8.2(000000.000*kWh)
0-0:96.14.0(0002)
1-0:1.7.0(02.027*kW)
1-0:2.7.0(00.000*kW)
0-0:96.7.21(00015)
0-0:96.7.9(00007)
1-0:99.97.0(3)(0-0:96.7.19)(000104180320W)(0000237126*s)(000101000001W)(2147483647*s)(000101000001W)(2147483647*s)
1-0:32.32.0(00000)
0-0:96.13.1()
0-0:96.13.0()
1-0:31.7.0(000*A)
1-0:21.7.0(00.170*kW)
1-0:22.7.0(00.000*kW)
0-1:24.1.0(003)
0-1:96.1.0(3232323241424344313233343536373839)
0-1:24.2.1(161129200000W)(00981.443*m3)
"""

V2_2 = """/ISk5\\2ME382-1003

0-0:96.1.1(4B413650303035303033353638313133)
1-0:1.8.1({t1}*kWh)
1-0:1.8.2(00100.001*kWh)
1-0:2.8.1(00010.010*kWh)
1-0:2.8.2(00001.001*kWh)
0-0:96.14.0(0002)
1-0:1.7.0(0001.19*kW)
1-0:2.7.0(0000.00*kW)
0-0:17.0.0(999*A)
0-0:96.3.10(1)
0-0:96.13.1()
0-0:96.13.0()
0-1:24.1.0(3)
0-1:96.1.0(3238313031453631373038389930337131)
0-1:24.3.0(090212160000)(00)(60)(1)(0-1:24.2.1)(m3)
(00001.001)
0-1:24.4.0(1)
!
"""

BELGIUM = """/FLU5\\253769484_A

0-0:96.1.4(50217)
0-0:96.1.1(3153414733313031303231363035)
0-0:1.0.0(200512135409S)
1-0:1.8.1(000000.034*kWh)
1-0:1.8.2(000015.758*kWh)
1-0:2.8.1(000000.000*kWh)
1-0:2.8.2(000000.011*kWh)
1-0:1.4.0(02.351*kW)
1-0:1.6.0(200509134558S)(02.589*kW)
0-0:98.1.0({count})(1-0:1.6.0)(1-0:1.6.0)(200501000000S)(200423192538S)(03.695*kW)\
(200401000000S)(200305122139S)(05.980*kW)(200301000000S)(200210035421W)(04.318*kW)
0-0:96.14.0(0001)
1-0:1.7.0(00.000*kW)
1-0:2.7.0(01.523*kW)
1-0:21.7.0(00.000*kW)
1-0:22.7.0(01.523*kW)
1-0:32.7.0(234.7*V)
1-0:31.7.0(000.00*A)
0-0:96.3.10(1)
0-0:17.0.0(999.9*kW)
1-0:31.4.0(999*A)
0-0:96.13.0()
0-1:24.1.0(003)
0-1:96.1.1(37464C4F32313139303333373333)
0-1:24.4.0(1)
0-1:24.2.3(200512134558S)(00112.384*m3)
"""


def _v5(ts: str = "170102192002W", t1: str = "000004.426") -> bytes:
    return _with_crc(V5.format(ts=ts, t1=t1))


def _v22(t1: str = "12345.678") -> bytes:
    return V2_2.format(t1=t1).replace("\n", "\r\n").encode("latin-1")


def seeds() -> list[bytes]:
    v22, v4, v5, be = (bytes([VARIANTS.index(v)]) for v in VARIANTS)
    half = bytes([2 | 32 << 2])  # v5, cut in the middle
    return [
        v22 + _v22(),
        v4 + _with_crc(V4),
        v5 + _v5(),
        be + _with_crc(BELGIUM.format(count=3)),
        # Two telegrams: the guard's relative rules (growth, then a jump).
        v5 + _v5() + _v5("170102192012W", "000004.500"),
        v5 + _v5() + _v5("170102192003W", "000005.426"),
        half + b"\x00junk!" + _v5()[:300] + _v5("170102192003W"),
        # Regressions, issue 17: max demand count beyond its values (1), huge
        # exponents (2, 3), an impossible value with a valid CRC (13.11).
        be + _with_crc(BELGIUM.format(count=4)),
        be + _with_crc(BELGIUM.format(count=99999999)),
        v5 + _v5() + _v5("170102192003W", "2E8999"),
        v5 + _v5(t1="-2E8999"),
        v22 + _v22("1e500000"),
        v5 + _v5(t1="999999999999.999"),
        v5 + _v5(t1="sNaN"),
    ]
