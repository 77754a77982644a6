"""P1 telegrams to readings, sans-IO: the decoding half of the DSMR P1 driver.

:class:`P1Decoder` takes bytes as they come from the port (any chunking) and
returns readings; :func:`reading_from_telegram` converts one telegram that
dsmr-parser has parsed. Neither does I/O or needs trio, so tests and the fuzz
target (tests/fuzz/fuzz_p1.py) drive them directly.

Register width: DSMR energy registers show 6.3 digits (F9(3,3)), so each
of the four must lie in 0..999999.999 kWh; power fields in 0..9999.99 kW
(the widest, DSMR 2.2's). These bounds are checked on the Decimal that
dsmr-parser returns, before anything is converted to an int: a value such
as ``1e500000`` would otherwise take seconds to convert (issue 17).

Bad input is never fatal: a telegram with a bad CRC, one that fails to parse
(including any error dsmr-parser itself raises on it), one longer than
``max_buffer``, one that lacks the energy registers and one whose values fail
the register width or :class:`~meter_drivers.base.ReadingGuard` are each
counted in :class:`P1Stats` and skipped. Partial telegrams are dropped by the
framing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.clients.telegram_buffer import TelegramBuffer
from dsmr_parser.exceptions import InvalidChecksumError, ParseError
from dsmr_parser.parsers import ProfileGenericParser, TelegramParser

from meter_drivers.base import DEFAULT_MAX_POWER_W, BadReading, Reading, ReadingGuard

SPECS: dict[str, dict[str, Any]] = {
    "v2.2": specs.V2_2,
    "v4": specs.V4,
    "v5": specs.V5,
    "belgium": specs.BELGIUM_FLUVIUS,
}

REGISTER_MAX_KWH = Decimal("999999.999")
"""The most a DSMR energy register can show: 6 digits, 3 decimals."""
POWER_MAX_KW = Decimal("9999.99")
"""The most a P1 power field can show (DSMR 2.2's 4.2 digits; later 2.3)."""
MAX_READING_WH = 2 * 999_999_999
"""Import (or export) is two tariff registers summed."""


@dataclass
class P1Stats:
    """Counters the daemon can report; all only ever increase."""

    telegrams: int = 0
    """Telegrams that produced a reading."""
    crc_errors: int = 0
    parse_errors: int = 0
    """Telegrams that failed to parse (dsmr-parser raised, the telegram was
    longer than ``max_buffer``) or lacked the energy registers or timestamp."""
    rejected: int = 0
    """Telegrams whose values failed validation: beyond the register width,
    negative, decreasing, or a jump or power the connection cannot carry."""
    partial: int = 0
    """Stretches of discarded input holding a telegram start or end: cut telegrams."""
    trimmed_bytes: int = 0
    """Bytes dropped because no telegram ended within ``max_buffer``."""


class _BoundedTelegramBuffer(TelegramBuffer):  # type: ignore[misc]
    # dsmr-parser's buffer grows without limit while no telegram end arrives,
    # and silently drops what precedes each telegram it finds. It keeps its
    # text in ``_buffer``; tests/meter_drivers/test_dsmr_p1.py pins this so
    # an upgrade that renames it fails loudly.
    _buffer: str

    def __init__(self) -> None:
        super().__init__()
        self.partial = 0

    def _remove(self, telegram: str) -> None:
        text: str = self._buffer
        dropped = text[: text.index(telegram)]
        if "/" in dropped or "!" in dropped:
            self.partial += max(1, dropped.count("/"))
        super()._remove(telegram)

    def trim(self, limit: int) -> int:
        """Drop old text beyond ``limit`` characters; returns how many were dropped."""
        text: str = self._buffer
        if len(text) <= limit:
            return 0
        start = text.rfind("/")
        kept = text[start:] if start >= 0 and len(text) - start <= limit else ""
        self._buffer = kept
        return len(text) - len(kept)


class P1Decoder:
    """Sans-IO: bytes from the P1 port in, readings out.

    ``feed(data)`` returns the readings completed by ``data`` (possibly none,
    possibly several), oldest first; it raises nothing on bad input, which
    is counted in ``stats`` instead. ``guard`` holds the last accepted reading.
    """

    def __init__(
        self,
        variant: str = "v5",
        *,
        max_buffer: int = 16384,
        clock: Callable[[], float] = time.time,
        max_power_w: int = DEFAULT_MAX_POWER_W,
    ) -> None:
        self._spec = SPECS[variant]
        self._parser = TelegramParser(self._spec)
        # dsmr-parser's ProfileGenericParser (power failure log, 99.97.0)
        # appends to its own list of value formats on every line it parses,
        # and the parsers live in the module-level specs, shared by every
        # decoder: without a reset that list grows for the life of the
        # process. test_hostile_input.py pins the attribute.
        self._growing: list[list[Any]] = [
            o["value_parser"].value_formats
            for o in self._spec["objects"]
            if isinstance(o["value_parser"], ProfileGenericParser)
            and isinstance(o["value_parser"].value_formats, list)
        ]
        self._buffer = _BoundedTelegramBuffer()
        self._max_buffer = max_buffer
        self._clock = clock if not self._spec["checksum_support"] else None
        self.guard = ReadingGuard(max_wh=MAX_READING_WH, max_power_w=max_power_w)
        self.stats = P1Stats()

    def feed(self, data: bytes) -> list[Reading]:
        # latin-1 maps every byte to one code point, so garbage cannot raise
        # and the CRC (computed over code points) sees the original bytes.
        self._buffer.append(data.decode("latin-1"))
        out: list[Reading] = []
        for telegram in self._buffer.get_all():
            reading = self._decode(telegram)
            if reading is not None:
                out.append(reading)
        self.stats.trimmed_bytes += self._buffer.trim(self._max_buffer)
        self.stats.partial = self._buffer.partial
        return out

    def _decode(self, telegram: str) -> Reading | None:
        if len(telegram) > self._max_buffer:
            # Only a single large chunk gets here (the port reads 4 KiB at a
            # time); the CRC alone is pure Python, about 1 us per character.
            self.stats.parse_errors += 1
            return None
        try:
            reading = reading_from_telegram(self._parse(telegram), clock=self._clock)
        except InvalidChecksumError:
            self.stats.crc_errors += 1
            return None
        except ParseError:
            self.stats.parse_errors += 1
            return None
        except BadReading:
            self.stats.rejected += 1
            return None
        try:
            self.guard.check(reading)
        except BadReading:
            self.stats.rejected += 1
            return None
        self.stats.telegrams += 1
        return reading

    def _parse(self, telegram: str) -> Any:
        """dsmr-parser's ``parse``; every failure of it on the text becomes ParseError.

        Raises :class:`InvalidChecksumError` or :class:`ParseError`.
        """
        lengths = [len(formats) for formats in self._growing]
        try:
            return self._parser.parse(telegram)
        except (InvalidChecksumError, ParseError):
            raise
        except Exception as exc:
            # Its line parsers trust the text: a 0-0:98.1.0 line whose count
            # exceeds its values raises IndexError, a non-numeric count
            # ValueError (issue 17). Whatever it raises here was caused by
            # the telegram, so it is a bad telegram, counted, not a crash.
            raise ParseError(f"dsmr-parser failed: {type(exc).__name__}") from exc
        finally:
            for formats, n in zip(self._growing, lengths, strict=True):
                del formats[n:]


def reading_from_telegram(telegram: Any, *, clock: Callable[[], float] | None = None) -> Reading:
    """The :class:`Reading` in a telegram parsed by dsmr-parser (see the module docstring).

    ``clock`` stamps telegrams without a timestamp (DSMR 2.2); with None a
    telegram must carry its own. Raises :class:`ParseError` for a missing or
    non-numeric energy register or a missing timestamp, :class:`BadReading`
    for a value outside its register's width. Never converts an unbounded
    number: each value is compared with its bound first.
    """
    import_kwh = _value(telegram, "ELECTRICITY_USED_TARIFF_1", REGISTER_MAX_KWH) + _value(
        telegram, "ELECTRICITY_USED_TARIFF_2", REGISTER_MAX_KWH
    )
    export_kwh = _value(telegram, "ELECTRICITY_DELIVERED_TARIFF_1", REGISTER_MAX_KWH) + _value(
        telegram, "ELECTRICITY_DELIVERED_TARIFF_2", REGISTER_MAX_KWH
    )
    power_w: int | None = None
    if hasattr(telegram, "CURRENT_ELECTRICITY_USAGE") and hasattr(
        telegram, "CURRENT_ELECTRICITY_DELIVERY"
    ):
        net_kw = _value(telegram, "CURRENT_ELECTRICITY_USAGE", POWER_MAX_KW) - _value(
            telegram, "CURRENT_ELECTRICITY_DELIVERY", POWER_MAX_KW
        )
        power_w = _thousandths(net_kw)
    stamp = getattr(getattr(telegram, "P1_MESSAGE_TIMESTAMP", None), "value", None)
    if isinstance(stamp, datetime):
        ts = int(stamp.timestamp())
    elif clock is not None:
        ts = int(clock())  # DSMR 2.2: no clock in the telegram
    else:
        raise ParseError("telegram has no valid timestamp")
    return Reading(
        ts=ts,
        import_wh=_thousandths(import_kwh),
        export_wh=_thousandths(export_kwh),
        power_w=power_w,
    )


def _value(telegram: Any, name: str, limit: Decimal) -> Decimal:
    """The number of field ``name``, known to lie in ``0..limit``."""
    field = getattr(telegram, name, None)
    if field is None:
        raise ParseError(f"telegram has no {name}")
    try:
        value = field.value
    except (AttributeError, LookupError, TypeError) as exc:
        raise ParseError(f"{name} has no value") from exc
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ParseError(f"{name} is not a number")
    # Comparing Decimals costs the same whatever the exponent; converting
    # 1e500000 to an int takes seconds. So compare first. (The value itself
    # stays out of the message: it may be thousands of characters.)
    if not 0 <= value <= limit:
        raise BadReading(f"{name} outside 0..{limit}")
    return value


def _thousandths(value: Decimal) -> int:
    """``value`` x 1000 as a whole number (kWh -> Wh, kW -> W); ``value`` is bounded."""
    return int((value * 1000).to_integral_value())
