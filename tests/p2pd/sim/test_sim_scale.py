"""What makes a simulated community cheap does not change its outcome.

The simulator shares verified signatures (``SimConfig.shared_verify``) and
messages decoded from identical bytes (``SimConfig.shared_decode``) between
its nodes, and gossips over lazy links; a run repeats for a seed either way,
and sharing changes no trade.
"""

from __future__ import annotations

from typing import Any

import pytest

from p2pd.sim.community import SIM_START, SimConfig
from p2pd.sim.run import run_sim


def outcome(report: dict[str, Any]) -> tuple[Any, ...]:
    return (report["trades"], report["energy_traded_wh"], report["paid_by_buyers"],
            [(m["member"], m["bought_wh"], m["sold_wh"], m["saving"]) for m in report["members"]])


@pytest.mark.parametrize(("sharing", "seed"), [("shared_verify", 5), ("shared_decode", 6)])
def test_sharing_between_simulated_nodes_changes_no_outcome(sharing: str, seed: int) -> None:
    base = dict(nodes=8, hours=2, start=SIM_START + 10 * 3600, memory=True, store="memory", virtual=True,
                seed=seed)
    shared = run_sim(SimConfig(**base))  # type: ignore[arg-type]
    alone = run_sim(SimConfig(**base, **{sharing: False}))  # type: ignore[arg-type]
    assert shared["trades"] > 0
    assert outcome(shared) == outcome(alone)
