"""Scenarios S2-S4 and their attacks in the simulation, in virtual time.

Small communities for a few simulated hours around midday under
``autojump_clock`` (the run costs only its CPU work): energy is traded, no
member pays more than without P2P, money adds up, and the S2-S4 attacks
achieve nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from p2pd.sim.community import SIM_START, SimConfig
from p2pd.sim.run import simulate


def config(scenario: str, **kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(nodes=8, scenario=scenario, hours=3, start=SIM_START + 9 * 3600, seed=3,
                                memory=True, store="memory", virtual=True)
    return SimConfig(**{**base, **kw})


@pytest.mark.parametrize("scenario", ["S2", "S3", "S4"])
async def test_scenario_trades_and_nobody_loses(scenario: str, autojump_clock: Any) -> None:
    report = await simulate(config(scenario))
    assert report["trades"] > 0 and report["energy_traded_wh"] > 0
    assert all(m["saving"] >= 0 for m in report["members"])
    assert report["paid_by_buyers"] == report["received_by_sellers"] > 0
    members = report["members"]
    assert sum(m["bought_wh"] for m in members) == sum(m["sold_wh"] for m in members) == report["energy_traded_wh"]
    roles = report["roles"]
    assert roles["receipt_logs"]["entries"] > 0 and roles["receipt_logs"]["equivocations_detected"] == 0
    if scenario in ("S2", "S3"):
        reps = roles["representatives"]
        assert sorted(reps) == ["rep0", "rep1"] and all(r["clients"] == 4 for r in reps.values())
        assert sum(r["netted_wh"] for r in reps.values()) > 0
    if scenario in ("S3", "S4"):
        assert roles["broker"]["slots_cleared"] > 0 and roles["broker"]["volume_wh"] > 0
        assert roles["broker"]["slots_failed"] == 0
    if scenario == "S3":
        assert sum(r["filled_wh"] for r in roles["representatives"].values()) > 0
    if scenario == "S4":
        assert roles["brokered"]["slots_broker"] > 0


@pytest.mark.parametrize("scenario", ["S3", "S4"])
async def test_equivocation_is_detected_and_a_broker_crash_loses_nothing(scenario: str, autojump_clock: Any) -> None:
    report = await simulate(config(scenario, hours=4, attacks=("equivocation", "broker_crash")))
    eq = report["attacks"]["equivocation"]
    assert eq["attempts"] == 3 and eq["successes"] == 0 and eq["detected"] == 3
    crash = report["attacks"]["broker_crash"]
    assert crash["attempts"] == 1 and crash["successes"] == 0, crash
    assert crash["matches_signed"] >= 1 and crash["finished_directly"] == crash["matches_signed"]
    assert crash["trades_after_crash"] > 0
    if scenario == "S4":
        assert crash["s1_trades_after_crash"] > 0  # the community went on trading over S1
    if scenario == "S3":
        assert crash["s2_trades_after_crash"] > 0  # the representatives went on trading directly
    assert all(m["saving"] >= 0 for m in report["members"])
    assert report["paid_by_buyers"] == report["received_by_sellers"]
