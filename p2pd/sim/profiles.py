"""Household profiles from CSV files: ``p2pd sim --profiles DIR`` (docs/simulation.md, "Profiles").

A community simulates itself with its own data: one CSV file per household,
``DIR/<member>.csv``; the member id is the file's name without ``.csv``
(letters, digits and ``._:-``, at most 64 characters), and the files are
taken in name order. Format::

    # lines starting with # are comments
    time,load_wh,pv_wh
    2026-03-02T00:00:00Z,61.5,0
    2026-03-02T00:15:00Z,58.0,0

* a header row naming ``time`` and ``load_wh``, and ``pv_wh`` for a
  household with PV (any order; other columns are ignored);
* one row per interval: ``time`` is its start, ISO 8601 (``Z`` or an offset;
  without one, UTC) or unix seconds; ``load_wh`` what the household consumed
  in it and ``pv_wh`` what its panels produced, in Wh (decimals allowed,
  0 to 100,000);
* the interval is the smallest step between two rows, 1 to 60 minutes, and
  every row lies on that grid, in increasing time. A missing row is an
  interval without energy.

The meter nets per interval, as an interval meter does: import = load - PV
where positive, export = PV - load where positive; within an interval the
registers grow linearly. Before the first row and after the last, nothing
is used or produced.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from meter_drivers import Reading
from p2pd.errors import P2pdError
from p2pd.sim.report import Metered

MEMBER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_FILE_BYTES = 64 * 2**20
MAX_ROWS = 1_100_000
"""Two years of one-minute rows."""
MAX_INTERVAL_WH = 100_000.0
"""Wh a household may use or produce in one interval of a profile (a sanity bound, not the wire's MAX_WH)."""
OPENING_IMPORT_WH = 1_000_000
OPENING_EXPORT_WH = 100_000


class ProfileError(P2pdError):
    """A profile file cannot be used (format, values, or it does not cover the window)."""


@dataclass(frozen=True)
class Profile:
    """One household's rows on a dense grid: energy per interval in mWh, from ``start``."""

    member_id: str
    start: int
    interval: int
    load_mwh: tuple[int, ...]
    pv_mwh: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + self.interval * len(self.load_mwh)


def parse_time(text: str) -> int:
    """Unix seconds from ISO 8601 (no offset = UTC) or a number. Raises ValueError."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return int(float(text))
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def _energy(text: str, what: str) -> int:
    value = float(text.strip() or "0")
    if not (math.isfinite(value) and 0 <= value <= MAX_INTERVAL_WH):
        raise ValueError(f"{what} {text.strip()!r} is not between 0 and {MAX_INTERVAL_WH:,.0f} Wh")
    return round(value * 1000)


def parse_profile(member_id: str, text: str) -> Profile:
    """One household's CSV text. Raises :class:`ProfileError` with the line at fault."""
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ProfileError(f"profile {member_id}: no header row")
    header = [h.strip().lower() for h in next(csv.reader([lines[0][1]]))]
    if "time" not in header or "load_wh" not in header:
        raise ProfileError(f"profile {member_id}: the header must name time and load_wh (got {lines[0][1]!r})")
    it, il = header.index("time"), header.index("load_wh")
    ip = header.index("pv_wh") if "pv_wh" in header else None
    rows: list[tuple[int, int, int]] = []
    if len(lines) - 1 > MAX_ROWS:
        raise ProfileError(f"profile {member_id}: more than {MAX_ROWS:,} rows")
    for number, line in lines[1:]:
        try:
            fields = next(csv.reader([line]))
            if len(fields) < len(header):
                raise ValueError(f"{len(fields)} fields, the header has {len(header)}")
            t = parse_time(fields[it])
            load = _energy(fields[il], "load_wh")
            pv = _energy(fields[ip], "pv_wh") if ip is not None else 0
        except ValueError as exc:
            raise ProfileError(f"profile {member_id}, line {number}: {exc}") from None
        if rows and t <= rows[-1][0]:
            raise ProfileError(f"profile {member_id}, line {number}: time does not increase")
        rows.append((t, load, pv))
    if len(rows) < 2:
        raise ProfileError(f"profile {member_id}: needs at least two rows (the interval is the step between them)")
    interval = min(b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False))
    if not 60 <= interval <= 3600:
        raise ProfileError(f"profile {member_id}: interval {interval} s is not between 1 and 60 minutes")
    start = rows[0][0]
    load_mwh = [0] * ((rows[-1][0] - start) // interval + 1)
    pv_mwh = list(load_mwh)
    for t, load, pv in rows:
        k, off = divmod(t - start, interval)
        if off:
            raise ProfileError(f"profile {member_id}: row at {t} is off the {interval} s grid")
        load_mwh[k], pv_mwh[k] = load, pv
    return Profile(member_id, start, interval, tuple(load_mwh), tuple(pv_mwh))


def profile_files(directory: str) -> list[Path]:
    """The CSV files of ``directory`` in name order. Raises :class:`ProfileError`."""
    root = Path(directory)
    if not root.is_dir():
        raise ProfileError(f"--profiles {directory}: not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if len(files) < 2:
        raise ProfileError(f"--profiles {directory}: needs at least two <member>.csv files (found {len(files)})")
    for p in files:
        if not MEMBER_ID.fullmatch(p.stem):
            raise ProfileError(f"--profiles: {p.name}: the name (the member id) may hold letters, digits "
                               "and ._:- and at most 64 characters")
    return files


def load_profiles(directory: str, limit: int | None = None) -> list[Profile]:
    """Parse the first ``limit`` (default all) profiles of ``directory``. Raises :class:`ProfileError`,
    also when it holds fewer."""
    files = profile_files(directory)
    if limit is not None and limit > len(files):
        raise ProfileError(f"--nodes {limit}, but --profiles {directory} holds {len(files)} households")
    out = []
    for path in files[:limit]:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProfileError(f"profile {path.name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"profile {path.name}: {exc}") from None
        out.append(parse_profile(path.stem, text))
    return out


def common_range(profiles: Sequence[Profile]) -> tuple[int, int]:
    """The window every profile covers: (latest start, earliest end), unix s."""
    return max(p.start for p in profiles), min(p.end for p in profiles)


class ProfileMeter:
    """A household meter that follows a :class:`Profile` (see the module docstring)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        imp, exp, pv = [0], [0], [0]
        self._imp_step, self._exp_step = [], []
        for load, gen in zip(profile.load_mwh, profile.pv_mwh, strict=True):
            self._imp_step.append(max(0, load - gen))
            self._exp_step.append(max(0, gen - load))
            imp.append(imp[-1] + self._imp_step[-1])
            exp.append(exp[-1] + self._exp_step[-1])
            pv.append(pv[-1] + gen)
        self._imp, self._exp, self._pv = imp, exp, pv

    def _at(self, prefix: list[int], step: Sequence[int], t: float) -> int:
        p = self.profile
        k, off = divmod(int(t) - p.start, p.interval)
        if k < 0:
            return 0
        if k >= len(step):
            return prefix[-1]
        return prefix[k] + step[k] * off // p.interval

    def reading_at(self, t: float) -> Reading:
        """The registers at unix time ``t`` (any order)."""
        p = self.profile
        k = (int(t) - p.start) // p.interval
        power = 0
        if 0 <= k < len(p.load_mwh):
            power = (p.load_mwh[k] - p.pv_mwh[k]) * 3600 // (1000 * p.interval)
        return Reading(ts=int(t), import_wh=OPENING_IMPORT_WH + self._at(self._imp, self._imp_step, t) // 1000,
                       export_wh=OPENING_EXPORT_WH + self._at(self._exp, self._exp_step, t) // 1000,
                       power_w=power)

    def pv_wh(self, start: int, end: int) -> int:
        """PV energy produced in ``[start, end)``, Wh (floor)."""
        return (self._at(self._pv, self.profile.pv_mwh, end) - self._at(self._pv, self.profile.pv_mwh, start)) // 1000


@dataclass(frozen=True)
class Facts:
    """What the simulation needs to make a household of a profile (p2pd.sim.community.households)."""

    member_id: str
    kind: str
    daily_kwh: float
    pv_kwp: float
    """Its peak PV power, kW."""
    meter: ProfileMeter


def facts_of(profile: Profile) -> Facts:
    peak_w = max(profile.pv_mwh, default=0) * 3600 / (1000 * profile.interval)
    days = max(1.0, (profile.end - profile.start) / 86400)
    return Facts(profile.member_id, "prosumer" if peak_w > 0 else "consumer",
                 round(sum(profile.load_mwh) / 1e6 / days, 2), round(peak_w / 1000, 1), ProfileMeter(profile))


def check_window(profiles: Sequence[Profile], start: int, end: int) -> None:
    """Raise :class:`ProfileError` unless every profile covers ``[start, end)``."""
    lo, hi = common_range(profiles)
    if start < lo or end > hi:
        raise ProfileError(f"the profiles together cover {_utc(lo)} to {_utc(hi)} UTC; the run "
                           f"({_utc(start)} to {_utc(end)}) does not fit: set --start and --hours")


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def write_profile(path: str | os.PathLike[str], rows: Iterable[tuple[int, float, float]]) -> None:
    """Write ``(time, load_wh, pv_wh)`` rows in the format above (times as ISO 8601 UTC)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["time", "load_wh", "pv_wh"])
        for t, load, pv in rows:
            out.writerow([datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          f"{load:.3f}".rstrip("0").rstrip("."), f"{pv:.3f}".rstrip("0").rstrip(".")])


def export_profiles(homes: Sequence[Metered], start: int, end: int, directory: str,
                    interval: int = 900) -> list[Path]:
    """Write each household's load and PV over ``[start, end)`` to ``directory/<member>.csv``.

    Load is PV plus import minus export per interval (the energy balance), so
    the written profile nets to the same energy per interval as the meter.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for h in homes:
        rows = []
        for t in range(start, end, interval):
            a, b = h.reading_at(t), h.reading_at(t + interval)
            pv = h.production_wh(t, t + interval)
            rows.append((t, float(pv + (b.import_wh - a.import_wh) - (b.export_wh - a.export_wh)), float(pv)))
        path = root / f"{h.member_id}.csv"
        write_profile(path, rows)
        paths.append(path)
    return paths
