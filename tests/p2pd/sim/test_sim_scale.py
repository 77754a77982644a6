"""What makes a simulated community cheap does not change its outcome.

The simulator shares verified signatures (``SimConfig.shared_verify``) and
messages decoded from identical bytes (``SimConfig.shared_decode``) between
its nodes, and gossips over lazy links; a run repeats for a seed either way,
and sharing changes no trade.
"""

from __future__ import annotations

from typing import Any

from p2pd.sim.community import SIM_START, SimConfig
from p2pd.sim.run import run_sim


def outcome(report: dict[str, Any]) -> tuple[Any, ...]:
    return (report["trades"], report["energy_traded_wh"], report["paid_by_buyers"],
            [(m["member"], m["bought_wh"], m["sold_wh"], m["saving"]) for m in report["members"]])


def test_shared_verification_changes_no_outcome() -> None:
    base = dict(nodes=8, hours=2, start=SIM_START + 10 * 3600, memory=True, store="memory", virtual=True, seed=5)
    shared = run_sim(SimConfig(**base))  # type: ignore[arg-type]
    alone = run_sim(SimConfig(**base, shared_verify=False))  # type: ignore[arg-type]
    assert shared["trades"] > 0
    assert outcome(shared) == outcome(alone)


def test_shared_decoding_changes_no_outcome() -> None:
    base = dict(nodes=8, hours=2, start=SIM_START + 10 * 3600, memory=True, store="memory", virtual=True, seed=6)
    shared = run_sim(SimConfig(**base))  # type: ignore[arg-type]
    alone = run_sim(SimConfig(**base, shared_decode=False))  # type: ignore[arg-type]
    assert shared["trades"] > 0
    assert outcome(shared) == outcome(alone)
