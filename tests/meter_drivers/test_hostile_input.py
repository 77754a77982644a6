"""Regression tests for hostile P1 input (issue 17, issue 13 point 11).

Each telegram here has a valid CRC, so only the driver's own checks stand
between it and a settled reading. Every one must end as a counted bad
telegram, quickly, and never as an exception out of ``P1Decoder.feed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from dsmr_parser.parsers import TelegramParser

from meter_drivers import BadReading, P1Decoder, Reading, ReadingGuard

Telegrams = dict[str, Callable[..., bytes]]


def _recrc(data: bytes) -> bytes:
    """``data`` with its CRC recomputed after an edit, the way a meter would send it."""
    body = data.decode("latin-1").split("!")[0] + "!"
    return (body + f"{TelegramParser.crc16(body):04X}\r\n").encode("latin-1")


def test_max_demand_count_beyond_its_values_is_a_parse_error(telegrams: Telegrams) -> None:
    # Finding 1: dsmr-parser's MaxDemandParser indexes values[count * 3 + 2]
    # without checking, and raised IndexError out of feed().
    good = telegrams["belgium"]()
    bad = _recrc(good.replace(b"0-0:98.1.0(3)", b"0-0:98.1.0(4)"))
    dec = P1Decoder("belgium")
    assert dec.feed(bad) == []
    assert dec.stats.parse_errors == 1
    assert len(dec.feed(good)) == 1


@pytest.mark.parametrize("value", ["2E8999", "-2E8999", "2e8999"])
def test_huge_exponent_register_is_rejected(telegrams: Telegrams, value: str) -> None:
    # Finding 2: 1-0:1.8.1(2E8999) became a 9,000-digit reading, and the
    # guard's message then failed to format it (ValueError, 4300 digits).
    t = telegrams["v5"]
    dec = P1Decoder("v5")
    assert len(dec.feed(t())) == 1
    assert dec.feed(t(ts="170102192003W", t1=value)) == []
    assert dec.stats.rejected == 1
    assert len(dec.feed(t(ts="170102192004W"))) == 1


def test_guard_message_of_a_huge_value_stays_short() -> None:
    guard = ReadingGuard()
    with pytest.raises(BadReading) as info:
        guard.check(Reading(0, -(10**9000), 0))
    assert len(str(info.value)) < 200
    assert guard.rejected == 1


@pytest.mark.parametrize("line", [b"1-0:1.8.1(12345.678*kWh)", b"1-0:1.7.0(0001.19*kW)"])
def test_v22_huge_exponent_is_rejected_quickly(telegrams: Telegrams, line: bytes) -> None:
    # Finding 3: Decimal("1e500000") -> int took 6.3 s. The bound is checked
    # on the Decimal first, so this takes microseconds; 1 s leaves a margin
    # of several thousand for a slow CI machine.
    number = line.split(b"(")[1].split(b"*")[0]
    data = telegrams["v2.2"]().replace(line, line.replace(number, b"1e500000"))
    dec = P1Decoder("v2.2", clock=lambda: 1_700_000_000.0)
    start = time.perf_counter()
    assert dec.feed(data) == []
    assert time.perf_counter() - start < 1.0
    assert dec.stats.rejected == 1


@pytest.mark.parametrize(
    "t1", ["999999999999.999", "1000000.000", "-000001.000", "Infinity", "NaN", "sNaN"]
)
def test_value_beyond_the_register_width_is_refused(telegrams: Telegrams, t1: str) -> None:
    # Issue 13.11: DSMR energy registers show 6.3 digits (<= 999999.999 kWh);
    # 999999999999.999 kWh used to become a reading of 10^15 Wh.
    dec = P1Decoder("v5")
    assert dec.feed(telegrams["v5"](t1=t1)) == []
    assert dec.stats.rejected + dec.stats.parse_errors == 1
    assert dec.stats.telegrams == 0


def test_full_register_width_is_accepted(telegrams: Telegrams) -> None:
    dec = P1Decoder("v5")
    [r] = dec.feed(telegrams["v5"](t1="999999.999", t2="999999.999"))
    assert r.import_wh == 2 * 999_999_999


def test_impossible_jump_is_refused(telegrams: Telegrams) -> None:
    # Default bound: 3 x 80 A x 230 V = 55,200 W. In 1 s (plus 1 s for whole-
    # second stamps) that is 31 Wh, plus 4 Wh of register rounding.
    t = telegrams["v5"]
    dec = P1Decoder("v5")
    assert len(dec.feed(t(t1="000100.000"))) == 1  # 19:20:02
    assert dec.feed(t(ts="170102192003W", t1="000100.036")) == []
    assert dec.stats.rejected == 1
    assert len(dec.feed(t(ts="170102192003W", t1="000100.035"))) == 1
    # One minute later at a lying 1 kWh more (60 kW): refused; at 900 Wh (54 kW): taken.
    assert dec.feed(t(ts="170102192103W", t1="000101.035")) == []
    assert [r.import_wh for r in dec.feed(t(ts="170102192103W", t1="000100.935"))] == [
        100_935 + 2_399
    ]
    assert dec.stats.rejected == 2


def test_max_power_option_raises_the_bound(telegrams: Telegrams) -> None:
    t = telegrams["v5"]
    dec = P1Decoder("v5", max_power_w=200_000)
    assert len(dec.feed(t(t1="000100.000"))) == 1
    assert len(dec.feed(t(ts="170102192003W", t1="000100.100"))) == 1


def test_reported_power_beyond_the_connection_is_refused(telegrams: Telegrams) -> None:
    dec = P1Decoder("v5")
    assert dec.feed(telegrams["v5"](p_in="99.999")) == []
    assert dec.stats.rejected == 1


def test_profile_generic_lines_do_not_grow_the_parser(telegrams: Telegrams) -> None:
    # dsmr-parser's ProfileGenericParser appends to its own (module-level,
    # shared) list of value formats on every 99.97.0 line it parses.
    from dsmr_parser import telegram_specifications as specs
    from dsmr_parser.parsers import ProfileGenericParser

    [parser] = [o["value_parser"] for o in specs.V5["objects"]
                if isinstance(o["value_parser"], ProfileGenericParser)]
    log = b"1-0:99.97.0(2)(0-0:96.7.19)(101208152415W)(0000000240*s)(101208151004W)(0000000301*s)\r\n"
    data = _recrc(telegrams["v5"]().replace(b"1-0:32.32.0", log + b"1-0:32.32.0"))
    dec = P1Decoder("v5")
    dec.feed(data)
    before = len(parser.value_formats)
    for _ in range(50):
        assert len(dec.feed(data)) == 1
    assert len(parser.value_formats) == before
