"""A deterministic simulated household meter: load profile plus optional PV.

Everything is a pure function of ``(seed, member, kind, options, t)``, so two
processes (or a test and the peer simulator) that share a seed see the same
meter. Time comes from the ``clock`` option, so a simulation can run a day in
seconds.

Options (``driver = "simulated"``):

- ``seed`` (int, default 0), ``member`` (int >= 0, default 0): select the household.
- ``kind``: ``"prosumer"`` (default, has PV) or ``"consumer"`` (no PV).
- ``daily_kwh`` (float): mean daily consumption; default 8-12 kWh drawn from the seed.
- ``pv_kwp`` (float): PV peak power; default 4.0 for prosumers, 0 for consumers.
- ``latitude`` (float degrees, default 51.0: London/Brussels).
- ``tz_offset_h`` (float, default 0): local time = UTC + offset; profiles
  use local time, PV peaks at local solar noon.
- ``origin`` (int unix s): where the cumulative registers start counting.
  Default: local midnight of the first reading's day. Readings before it are
  rejected.
- ``interval`` (float s, default 0): ``read()`` first sleeps this long (trio clock).
- ``clock`` (callable returning unix seconds, default ``time.time``).
- ``max_power_w`` (int W): the :class:`~meter_drivers.base.ReadingGuard`
  bound that ``read()`` applies. Default: 55,200, or the model's own peak
  if that can be higher (6,900 W per daily kWh, 800 W per kWp; see below),
  so that a valid configuration never trips it.

Model, per local minute: load = (base 180 W + Gaussian peaks at 07:30, 12:30,
18:30 and 21:00 + kettle/oven events) x noise, scaled so the day totals
``daily_kwh`` x a day factor in [0.85, 1.15]. PV = ``pv_kwp`` x 0.8 x
sin(solar elevation)^1.2 x cloudiness (a per-day clearness in [0.2, 1] with a
per-minute random walk). Net power = load - PV; per minute, the positive part
goes to the import register and the negative part to export, in integer mWh
(floor), reported in whole Wh (floor). Within a minute energy grows linearly.

Peak bound: a minute's load shape is at most (180 + 2,150 of peaks) x 1.3
+ 5 events x 3,000 = 18,029 W before scaling; the day's shape sums to at
least 1440 x 180 x 0.7 W-min = 3,024 Wh, and the scale is target / that, with
target <= 1.15 x ``daily_kwh``. So load <= 6,857 W per daily kWh; PV <= 800 W
per kWp.

``reading_at(t)`` is a pure function of ``t`` (any order); ``read()`` passes
each reading through the guard, so the clock going backwards gives
:class:`~meter_drivers.base.BadReading`.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from meter_drivers._options import (
    Option,
    in_range,
    max_power_option,
    non_negative,
    one_of,
    validate,
)
from meter_drivers.base import DEFAULT_MAX_POWER_W, BadReading, Reading, ReadingGuard

MINUTES = 1440

OPTIONS = {
    "seed": Option("int", 0),
    "member": Option("int", 0, in_range(0, 2**31)),
    "kind": Option("str", "prosumer", one_of("prosumer", "consumer")),
    "daily_kwh": Option("float", None, lambda v: None if 0 < v <= 200 else "must be in (0, 200]"),
    "pv_kwp": Option("float", None, lambda v: None if 0 <= v <= 100 else "must be in [0, 100]"),
    "latitude": Option("float", 51.0, lambda v: None if -66 <= v <= 66 else "must be in [-66, 66]"),
    "tz_offset_h": Option("float", 0.0, lambda v: None if -14 <= v <= 14 else "must be in [-14, 14]"),
    "origin": Option("int", None, non_negative),
    "interval": Option("float", 0.0, non_negative),
    "clock": Option("callable", time.time),
    "max_power_w": max_power_option(None),
}

_LOAD_W_PER_DAILY_KWH = 6_900  # > 6,857: the peak bound in the module docstring
_PV_W_PER_KWP = 800


@dataclass(frozen=True)
class DayProfile:
    """One local day of mean power per minute (1440 entries each), in W."""

    load_w: tuple[int, ...]
    pv_w: tuple[int, ...]


def _rng(*parts: object) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random: stable across runs
    # and platforms, unlike hash().
    return random.Random("/".join(str(p) for p in parts))


def member_defaults(seed: int, member: int, kind: str) -> tuple[float, float]:
    """(daily_kwh, pv_kwp) a member gets when the options leave them out."""
    rng = _rng("member", seed, member)
    return 8.0 + 4.0 * rng.random(), (4.0 if kind == "prosumer" else 0.0)


_PEAKS = ((7.5, 1.0, 600.0), (12.5, 1.5, 250.0), (18.5, 1.8, 900.0), (21.0, 1.0, 400.0))
# Every household's load has this shape before its own noise: W per minute of the day.
_BASE_SHAPE = tuple(180.0 + sum(a * math.exp(-(((m / 60 - c) / s) ** 2) / 2) for c, s, a in _PEAKS)
                    for m in range(MINUTES))


@functools.lru_cache(maxsize=8)
def day_profile(
    seed: int, member: int, day: int, daily_kwh: float, pv_kwp: float, latitude: float
) -> DayProfile:
    """The profile of local day ``day`` (days since 1970-01-01). Pure and cached."""
    rng = _rng("day", seed, member, day)
    shape = [w * rng.uniform(0.7, 1.3) for w in _BASE_SHAPE]
    for _ in range(rng.randint(2, 5)):  # kettle, oven, washing machine
        start, watts, length = rng.randrange(6 * 60, 23 * 60), rng.uniform(1500, 3000), rng.randint(3, 20)
        for m in range(start, min(start + length, MINUTES)):
            shape[m] += watts
    target_wh = daily_kwh * 1000 * rng.uniform(0.85, 1.15)
    scale = target_wh / (sum(shape) / 60)
    load = tuple(int(w * scale) for w in shape)

    pv: tuple[int, ...] = (0,) * MINUTES
    if pv_kwp > 0:
        decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + (day % 365) + 1) / 365)
        lat = math.radians(latitude)
        clearness = rng.uniform(0.2, 1.0)
        cloud, values = clearness, []
        for m in range(MINUTES):
            omega = math.radians(15 * (m / 60 - 12))
            sin_elev = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(omega)
            cloud = min(1.0, max(0.1, cloud + rng.gauss(0, 0.04) + 0.1 * (clearness - cloud)))
            values.append(int(pv_kwp * 800 * max(0.0, sin_elev) ** 1.2 * cloud) if sin_elev > 0 else 0)
        pv = tuple(values)
    return DayProfile(load, pv)


def _minute_mwh(profile: DayProfile, m: int) -> tuple[int, int]:
    net = profile.load_w[m] - profile.pv_w[m]
    # W for one minute = W/60 Wh = W*50/3 mWh.
    return (net * 50 // 3, 0) if net >= 0 else (0, -net * 50 // 3)


@functools.lru_cache(maxsize=8)
def _prefix(profile: DayProfile) -> tuple[tuple[int, ...], tuple[int, ...]]:
    imp, exp, si, se = [0], [0], 0, 0
    for m in range(MINUTES):
        i, e = _minute_mwh(profile, m)
        si, se = si + i, se + e
        imp.append(si)
        exp.append(se)
    return tuple(imp), tuple(exp)


class SimulatedMeter:
    """A simulated household meter; see the module docstring for the model."""

    def __init__(self, options: dict[str, Any]) -> None:
        o = validate(OPTIONS, options)
        daily, kwp = member_defaults(o["seed"], o["member"], o["kind"])
        self.seed: int = o["seed"]
        self.member: int = o["member"]
        self.daily_kwh: float = o["daily_kwh"] if o["daily_kwh"] is not None else daily
        self.pv_kwp: float = o["pv_kwp"] if o["pv_kwp"] is not None else kwp
        self.latitude: float = o["latitude"]
        self._offset = int(o["tz_offset_h"] * 3600)
        self._origin: int | None = o["origin"]
        self._interval: float = o["interval"]
        self._clock = o["clock"]
        rng = _rng("opening", self.seed, self.member)
        self.opening_import_wh = 5_000_000 + rng.randrange(10_000_000)
        self.opening_export_wh = 1_000_000 + rng.randrange(5_000_000) if self.pv_kwp else 0
        self._day_totals: dict[int, tuple[int, int]] = {}
        self._profiles: dict[int, DayProfile] = {}  # the days this meter was read on lately
        max_power_w = o["max_power_w"]
        if max_power_w is None:
            model_peak = max(
                self.daily_kwh * _LOAD_W_PER_DAILY_KWH, self.pv_kwp * _PV_W_PER_KWP
            )
            max_power_w = max(DEFAULT_MAX_POWER_W, math.ceil(model_peak))
        self.guard = ReadingGuard(max_power_w=max_power_w)

    def profile(self, day: int) -> DayProfile:
        # Kept per meter: day_profile's shared cache holds only a few days of
        # a few members, and a simulated community reads hundreds of meters
        # in turn.
        found = self._profiles.get(day)
        if found is None:
            found = day_profile(self.seed, self.member, day, self.daily_kwh, self.pv_kwp, self.latitude)
            if len(self._profiles) >= 2:  # today and tomorrow (forecasts look ahead)
                del self._profiles[min(self._profiles)]
            self._profiles[day] = found
        return found

    def pv_wh(self, start: int, end: int) -> int:
        """PV energy produced in ``[start, end)`` (unix s, whole local minutes), Wh (floor)."""
        if not self.pv_kwp:
            return 0
        total_w_min = 0
        for minute in range((start + self._offset) // 60, (end + self._offset) // 60):
            day, m = divmod(minute, MINUTES)
            total_w_min += self.profile(day).pv_w[m]
        return total_w_min // 60

    def _day_total(self, day: int) -> tuple[int, int]:
        if day not in self._day_totals:
            imp, exp = _prefix(self.profile(day))
            self._day_totals[day] = (imp[-1], exp[-1])
        return self._day_totals[day]

    def reading_at(self, t: float) -> Reading:
        """The reading at unix time ``t``. Raises BadReading before ``origin``."""
        local = int(t) + self._offset
        if self._origin is None:
            self._origin = local // 86400 * 86400 - self._offset
        origin_local = self._origin + self._offset
        if local < origin_local:
            raise BadReading(f"time {int(t)} is before the simulated meter's origin")
        day, sec = divmod(local, 86400)
        minute, s = divmod(sec, 60)
        imp = exp = 0
        first_day, first_sec = divmod(origin_local, 86400)
        for d in range(first_day, day):
            di, de = self._day_total(d)
            imp, exp = imp + di, exp + de
        profile = self.profile(day)
        pi, pe = _prefix(profile)
        mi, me = _minute_mwh(profile, minute)
        imp += pi[minute] + mi * s // 60
        exp += pe[minute] + me * s // 60
        if first_sec:  # origin inside a day: subtract that day's part before it
            fp = self.profile(first_day)
            fpi, fpe = _prefix(fp)
            om, os_ = divmod(first_sec, 60)
            oi, oe = _minute_mwh(fp, om)
            imp -= fpi[om] + oi * os_ // 60
            exp -= fpe[om] + oe * os_ // 60
        return Reading(
            ts=int(t),
            import_wh=self.opening_import_wh + imp // 1000,
            export_wh=self.opening_export_wh + exp // 1000,
            power_w=profile.load_w[minute] - profile.pv_w[minute],
        )

    async def read(self) -> Reading:
        if self._interval:
            await trio.sleep(self._interval)
        else:
            await trio.lowlevel.checkpoint()
        return self.guard.check(self.reading_at(self._clock()))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
