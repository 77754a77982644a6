"""Any day, any length: --start, multi-day runs, seasons, and household profiles from CSV.

All runs are in virtual time (their outcome depends on the seed only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pd.cli import main as cli
from p2pd.sim.community import SIM_START, Household, SimConfig, households
from p2pd.sim.profiles import (
    OPENING_EXPORT_WH,
    OPENING_IMPORT_WH,
    ProfileError,
    export_profiles,
    facts_of,
    parse_profile,
)
from p2pd.sim.run import run_sim

DAY = 86400
WINTER = 1_797_811_200
"""2026-12-21 00:00 UTC."""


def virtual(**kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(nodes=8, hours=24, seed=2, memory=True, store="memory", virtual=True)
    return SimConfig(**{**base, **kw})


def test_a_profile_is_followed_interval_by_interval() -> None:
    text = "\n".join([
        "# a household with PV, half-hourly",
        "time,load_wh,pv_wh,comment",
        "2026-06-21T10:00:00Z,300,100,",
        "2026-06-21T10:30:00+00:00,200,500.5,sunny",
        "2026-06-21 11:00,100,0,",
        # 11:30 and 12:00 missing: no energy
        "1782045000,60,30,unix seconds (12:30)",
    ])
    p = parse_profile("h1", text)
    assert p.interval == 1800 and p.start == SIM_START + 10 * 3600 and p.end == SIM_START + 13 * 3600
    f = facts_of(p)
    home = Household(0, f.member_id, f.kind, f.daily_kwh, f.pv_kwp, f.meter)
    t0 = SIM_START + 10 * 3600

    def delta(a: int, b: int) -> tuple[int, int]:
        ra, rb = home.reading_at(a), home.reading_at(b)
        return rb.import_wh - ra.import_wh, rb.export_wh - ra.export_wh

    assert home.reading_at(t0 - 3600).import_wh == OPENING_IMPORT_WH  # before the first row
    assert home.reading_at(t0).export_wh == OPENING_EXPORT_WH
    assert delta(t0, t0 + 1800) == (200, 0)  # load 300 - PV 100
    assert delta(t0, t0 + 900) == (100, 0)  # linear within the interval
    assert delta(t0 + 1800, t0 + 3600) == (0, 300)  # PV 500.5 - load 200, floored
    assert delta(t0 + 3600, t0 + 5400) == (100, 0)
    assert delta(t0 + 5400, t0 + 9000) == (0, 0)  # the missing rows
    assert delta(t0 + 9000, t0 + 10800) == (30, 0)
    assert delta(t0 + 10800, t0 + 99999) == (0, 0)  # after the last
    assert home.production_wh(t0, t0 + 3 * 3600) == 630
    assert home.kind == "prosumer" and home.pv_kwp == 1.0  # 500.5 Wh in half an hour


@pytest.mark.parametrize(("text", "message"), [
    ("when,load_wh\n", "must name time and load_wh"),
    ("time,load_wh\n2026-06-21T10:00Z,5\n", "at least two rows"),
    ("time,load_wh\n2026-06-21T10:00Z,5\n2026-06-21T09:45Z,5\n", "line 3: time does not increase"),
    ("time,load_wh\n2026-06-21T10:00Z,5\n2026-06-21T10:15Z,-1\n", "line 3: load_wh '-1' is not between"),
    ("time,load_wh,pv_wh\n2026-06-21T10:00Z,5,nan\n", "line 2: pv_wh 'nan'"),
    ("time,load_wh\nyesterday,5\n", "line 2: Invalid isoformat"),
    ("time,load_wh\n2026-06-21T10:00Z,5\n2026-06-21T10:00:30Z,5\n", "interval 30 s"),
    ("time,load_wh\n2026-06-21T10:00Z,5\n2026-06-21T10:15Z,5\n2026-06-21T10:40Z,5\n", "off the 900 s grid"),
    ("time,load_wh\n2026-06-21T10:00Z\n", "line 2: 1 fields"),
])
def test_bad_profiles_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile("h1", text)


def test_profile_directory_round_trip(tmp_path: Path) -> None:
    # Write the seeded households' profiles, load them back: every slot nets
    # the same energy and PV, so the agents, who trade their forecast net
    # energy, make the same trades.
    cfg = virtual(nodes=6, hours=6, start=SIM_START + 8 * 3600)
    seeded = households(cfg, 900, 0)
    export_profiles(seeded, cfg.start - 3600, cfg.end + 3 * 3600, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m000{i}.csv" for i in range(6)]
    assert (tmp_path / "m0000.csv").read_text().startswith("time,load_wh,pv_wh\n2026-06-21T07:00:00Z,")
    loaded = households(virtual(nodes=6, hours=6, start=cfg.start, profiles=str(tmp_path)), 900, 0)
    for a, b in zip(seeded, loaded, strict=True):
        assert (a.member_id, a.kind) == (b.member_id, b.kind)
        for s in range(cfg.start, cfg.end, 900):
            net = [(h.reading_at(s + 900).export_wh - h.reading_at(s).export_wh)
                   - (h.reading_at(s + 900).import_wh - h.reading_at(s).import_wh) for h in (a, b)]
            assert net[0] == net[1]
            assert a.production_wh(s, s + 900) == b.production_wh(s, s + 900)
    first = run_sim(cfg)
    again = run_sim(virtual(nodes=6, hours=6, start=cfg.start, profiles=str(tmp_path)))
    assert again["profiles"] == str(tmp_path)
    assert again["energy_traded_wh"] == first["energy_traded_wh"] > 0
    assert again["matrix"] == first["matrix"]
    assert again["fidelity"]["matchable_wh"] == first["fidelity"]["matchable_wh"]


def test_cli_profiles_default_to_their_window_and_refuse_another(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--nodes", "3", "--start", "2026-03-02T09:00", "--hours", "3",
                     "--write-profiles", str(tmp_path)]) == 0
    capsys.readouterr()
    code = cli.main(["sim", "--profiles", str(tmp_path), "--memory", "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["nodes"] == 3 and report["hours"] == 3.0  # every household, the window they cover
    assert report["start_utc"] == "2026-03-02 09:00" and report["end_utc"] == "2026-03-02 12:00"
    assert cli.main(["sim", "--profiles", str(tmp_path), "--memory", "--start", "2026-03-02T11:00",
                     "--hours", "2"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert cli.main(["sim", "--profiles", str(tmp_path), "--memory", "--nodes", "4"]) == 2
    assert "holds 3 households" in capsys.readouterr().err


def test_winter_trades_much_less_than_midsummer() -> None:
    # 06:00 to 18:00 UTC: all of the winter daylight (London), most of the summer's.
    summer = run_sim(virtual(start=SIM_START + 6 * 3600, hours=12))
    winter = run_sim(virtual(start=WINTER + 6 * 3600, hours=12))
    assert winter["start_utc"] == "2026-12-21 06:00"
    # Short days and a low sun: far less PV, so far less surplus to trade.
    assert winter["pv_production_wh"] < 0.3 * summer["pv_production_wh"]
    assert winter["energy_traded_wh"] < 0.5 * summer["energy_traded_wh"]
    assert winter["fidelity"]["matchable_wh"] < 0.5 * summer["fidelity"]["matchable_wh"]
    assert all(m["saving"] >= 0 for m in winter["members"])


def test_a_week_runs_and_trades_every_day() -> None:
    report = run_sim(virtual(nodes=4, hours=7 * 24, start=SIM_START - 3 * DAY))
    assert report["end_utc"] == "2026-06-25 00:00"
    days = {(int(s) - report_start(report)) // DAY for s in report["plot_data"]["traded_by_slot"]}
    assert days == set(range(7))
    assert all(m["saving"] >= 0 for m in report["members"])
    assert report["paid_by_buyers"] == report["received_by_sellers"] > 0


def report_start(report: dict[str, Any]) -> int:
    return SIM_START - 3 * DAY
