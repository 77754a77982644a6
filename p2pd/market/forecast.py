"""Net energy forecasts per slot for the trading agent. Pure functions.

Sign: net energy = import - export in Wh, so a negative forecast is a
surplus the member can offer and a positive one a need it can bid for.

Method (:func:`forecast_net`), for a slot starting at ``s``, knowing the
history of completed slots up to ``now``:

- ``y`` = the net energy of the same slot one day earlier (``s - 86400``);
- ``r`` = the mean net energy of the last ``recent_slots`` completed slots
  before ``now`` (only those present in the history);
- forecast = ``(w * y + (100 - w) * r) / 100`` with ``w =
  yesterday_weight_pct`` (default 50), rounded half up to whole Wh.
  With only one of ``y`` and ``r`` known, that one; with neither, None.

Yesterday's slot carries the daily shape (morning peak, midday PV); the
recent mean corrects for today's level (a cloudy day, a family at home).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from p2pd.market.settlement import CumulativeReading, register_at

DAY = 86400


def net_by_slot(readings: Sequence[CumulativeReading], slot_seconds: int) -> dict[int, int]:
    """Net energy (import - export, Wh) per slot start, for every slot the readings cover.

    ``readings`` are sorted by ``ts``. Slot boundaries are multiples of
    ``slot_seconds`` in unix time; registers at boundaries are interpolated
    by :func:`p2pd.market.settlement.register_at`, the rule settlement uses.
    """
    if slot_seconds <= 0:
        raise ValueError("slot_seconds must be positive")
    if not readings:
        return {}
    first = -(-readings[0].ts // slot_seconds) * slot_seconds
    out: dict[int, int] = {}
    prev = None
    for start in range(first, readings[-1].ts + 1, slot_seconds):
        imp, exp = register_at(readings, start)
        if prev is not None:
            out[start - slot_seconds] = (imp - prev[0]) - (exp - prev[1])
        prev = (imp, exp)
    return out


def forecast_net(
    history: Mapping[int, int],
    slot_start: int,
    *,
    now: int,
    slot_seconds: int,
    recent_slots: int = 4,
    yesterday_weight_pct: int = 50,
) -> int | None:
    """Forecast one slot's net energy in Wh by the method in the module docstring.

    ``history`` maps slot start -> net Wh of completed slots. Slots that end
    after ``now`` are ignored, so a caller cannot leak the future in.
    Raises ValueError for a non-positive ``slot_seconds``, a negative
    ``recent_slots`` or a weight outside 0..100.
    """
    if slot_seconds <= 0 or recent_slots < 0 or not 0 <= yesterday_weight_pct <= 100:
        raise ValueError("bad forecast parameters")
    last_done = (now // slot_seconds) * slot_seconds - slot_seconds  # start of last completed slot
    y_slot = slot_start - DAY
    y = history.get(y_slot) if y_slot <= last_done else None
    recent = [
        history[s]
        for s in range(last_done, last_done - recent_slots * slot_seconds, -slot_seconds)
        if s in history
    ]
    if y is None and not recent:
        return None
    if not recent:
        return y
    n, total = len(recent), sum(recent)
    if y is None:
        return _round_div(total, n)
    w = yesterday_weight_pct
    return _round_div(w * y * n + (100 - w) * total, 100 * n)


def forecast_horizon(
    history: Mapping[int, int],
    *,
    now: int,
    slot_seconds: int,
    count: int,
    recent_slots: int = 4,
    yesterday_weight_pct: int = 50,
) -> dict[int, int | None]:
    """Forecasts for the ``count`` slots starting with the one containing ``now``."""
    current = (now // slot_seconds) * slot_seconds
    return {
        s: forecast_net(
            history, s, now=now, slot_seconds=slot_seconds,
            recent_slots=recent_slots, yesterday_weight_pct=yesterday_weight_pct,
        )
        for s in range(current, current + count * slot_seconds, slot_seconds)
    }


def _round_div(num: int, den: int) -> int:
    """num / den rounded half up (towards +infinity on ties), den > 0."""
    return (2 * num + den) // (2 * den)
