"""The meter forecast the agent and client components trade from.

:func:`feed_forecaster` seeds a :class:`~p2pd.roles.agent.ReadingsForecaster`
from the readings stored over the last two days and then feeds it every
``meter_reading`` event; :class:`NoMeter` stands in when there is no meter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from p2pd import storage
from p2pd.events import MeterReading
from p2pd.roles.agent import ReadingsForecaster
from store import ReadingRecord

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

HISTORY_SECONDS = 2 * 86400


async def feed_forecaster(ctx: DaemonContext, forecaster: ReadingsForecaster, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Seed ``forecaster`` from the store, then add every new meter reading."""
    meter_id = ctx.identity.credential.metering_point
    async with ctx.node.events.subscribe() as events:
        # Subscribe first, then read the store: a reading published in
        # between is in both, and ReadingsForecaster.add ignores repeats.
        now = int(forecaster.clock.now())
        stored = await storage.call(ctx.repo, ctx.repo.readings, meter_id,
                                    now - HISTORY_SECONDS, now + 1)
        for rec in stored:
            forecaster.add(rec)
        task_status.started()
        async for event in events:
            if isinstance(event, MeterReading):
                forecaster.add(ReadingRecord(meter_id, event.ts, event.import_wh, event.export_wh,
                                             event.power_w))


class NoMeter:
    """``[meter] driver = "none"``: nothing is measured, so nothing is offered."""

    healthy = False
