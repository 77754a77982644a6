"""Replay of recorded meter readings from a CSV file.

Options (``driver = "csv"``): ``path`` (str, required), ``loop`` (bool,
default false: after the last row ``read()`` raises
:class:`~meter_drivers.base.MeterUnavailable`; true: start again with time
and both registers shifted so they keep increasing), ``interval`` (float s,
default 0: ``read()`` first sleeps this long on the trio clock),
``max_rows`` (int, default 1,000,000), ``max_power_w`` (int W, default
55,200: see below).

Format: a header row naming ``ts,import_wh,export_wh`` and optionally
``power_w`` (any order, extra columns ignored), then one row per reading,
integers of at most 20 characters, ``power_w`` may be empty. Rows that do
not parse or whose values fail :class:`~meter_drivers.base.ReadingGuard`
(negative, decreasing, beyond the register width, more power or faster
growth than ``max_power_w`` allows) are skipped and counted in
``rejected``.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import trio

from meter_drivers._options import Option, max_power_option, positive, validate
from meter_drivers.base import (
    DEFAULT_MAX_POWER_W,
    BadReading,
    DriverConfigError,
    MeterUnavailable,
    Reading,
    ReadingGuard,
)

OPTIONS = {
    "path": Option("str"),
    "loop": Option("bool", False),
    "interval": Option("float", 0.0, lambda v: None if v >= 0 else "must be >= 0"),
    "max_rows": Option("int", 1_000_000, positive),
    "max_power_w": max_power_option(),
}

_MAX_FILE = 256 * 1024 * 1024
_MAX_FIELD = 20
"""Characters in one number: 10**19 Wh is far beyond any register, and int()
of a long digit string costs time (Python refuses past 4,300 digits)."""


def _int(field: str) -> int:
    text = field.strip()
    if len(text) > _MAX_FIELD:
        raise ValueError(f"number of {len(text)} characters")
    return int(text)


def parse_csv(
    text: str, max_rows: int = 1_000_000, max_power_w: int = DEFAULT_MAX_POWER_W
) -> tuple[list[Reading], int]:
    """Parse CSV text into (valid readings, number of rejected rows).

    Each row passes a :class:`ReadingGuard` bounded by ``max_power_w``.

    Raises :class:`BadReading` if the header lacks a required column or
    no row is valid.
    """
    rows = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(rows, [])]
    cols = {}
    for name in ("ts", "import_wh", "export_wh", "power_w"):
        if name in header:
            cols[name] = header.index(name)
        elif name != "power_w":
            raise BadReading(f"CSV header has no {name!r} column")
    guard, out = ReadingGuard(max_power_w=max_power_w), []
    for i, row in enumerate(rows):
        if i >= max_rows:
            break
        if not row:
            continue
        try:
            power = row[cols["power_w"]].strip() if "power_w" in cols else ""
            reading = Reading(
                ts=_int(row[cols["ts"]]),
                import_wh=_int(row[cols["import_wh"]]),
                export_wh=_int(row[cols["export_wh"]]),
                power_w=_int(power) if power else None,
            )
            out.append(guard.check(reading))
        except (ValueError, IndexError):
            guard.rejected += 1
        except BadReading:
            pass  # counted by the guard
    if not out:
        raise BadReading("CSV file has no valid readings")
    return out, guard.rejected


class CsvReplayMeter:
    """Returns the rows of a CSV file in order, one per ``read()``."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._opts = validate(OPTIONS, options)
        self._rows: list[Reading] | None = None
        self.rejected = 0
        self._index = 0
        self._shift = (0, 0, 0)

    async def _load(self) -> list[Reading]:
        path = trio.Path(self._opts["path"])
        try:
            if (await path.stat()).st_size > _MAX_FILE:
                raise DriverConfigError("path", f"{path} is larger than {_MAX_FILE} bytes")
            text = await path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DriverConfigError("path", f"cannot read {path}: {exc}") from exc
        try:
            rows, self.rejected = parse_csv(
                text, self._opts["max_rows"], self._opts["max_power_w"]
            )
        except BadReading as exc:
            raise DriverConfigError("path", f"{path}: {exc}") from exc
        return rows

    async def read(self) -> Reading:
        if self._opts["interval"]:
            await trio.sleep(self._opts["interval"])
        if self._rows is None:
            self._rows = await self._load()
        rows = self._rows
        if self._index >= len(rows):
            if not self._opts["loop"]:
                raise MeterUnavailable("CSV replay reached the end of the file")
            first, last = rows[0], rows[-1]
            step = rows[1].ts - rows[0].ts if len(rows) > 1 else 1
            dt, di, de = self._shift
            self._shift = (
                dt + last.ts - first.ts + max(step, 1),
                di + last.import_wh - first.import_wh,
                de + last.export_wh - first.export_wh,
            )
            self._index = 0
        r = rows[self._index]
        self._index += 1
        dt, di, de = self._shift
        return Reading(r.ts + dt, r.import_wh + di, r.export_wh + de, r.power_w)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
