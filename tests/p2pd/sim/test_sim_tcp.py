"""The loopback TCP mode: nodes in worker processes over real TCP, paced so the report never lies.

Small communities on 127.0.0.1 only, through the ``p2pd sim`` command (the
workers are real processes). Every run is bounded: by its simulated hours
at a fixed scale, by the pacer's stop, and by a timeout on the whole
command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import trio

from p2pd.cli import main as cli
from p2pd.sim import pace
from p2pd.sim.community import SIM_START, SimConfig
from p2pd.sim.run import run_sim

MIDDAY = "2026-06-21T10:00"


def sim(*args: str, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    """Run ``p2pd sim ... --json --quiet`` in a subprocess: (exit status, report, stderr)."""
    cmd = [sys.executable, "-m", "p2pd", "sim", *args, "--json", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = done.stdout.strip().splitlines()
    assert len(out) == 1, (done.stdout[-2000:], done.stderr[-2000:])
    return done.returncode, json.loads(out[0]), done.stderr


@pytest.mark.slow
def test_tcp_mode_on_two_workers_trades_runs_attacks_and_states_its_fidelity() -> None:
    code, report, err = sim("--nodes", "6", "--hours", "2", "--start", MIDDAY, "--seed", "1",
                            "--time-scale", "720", "--workers", "2",
                            "--attack", "impersonation", "--attack", "double_sell")
    assert code == 0, err[-2000:]
    assert report["transport"] == "tcp-loopback" and report["workers"] == 2 and report["store"] == "sqlite"
    # Fidelity: stated, and high at a scale a few nodes keep up with.
    f = report["fidelity"]
    assert f["traded_wh"] == report["energy_traded_wh"] > 0 and f["share"] >= 0.5, f
    assert "fidelity: traded" in err
    p = report["pace"]
    assert p["requested_scale"] == 720.0 and p["stopped"] is None and report["stopped"] is None
    # Attacks run in the TCP mode (worker 0, against its members) and report.
    attacks = report["attacks"]
    assert attacks["impersonation"]["attempts"] > 0 and attacks["impersonation"]["successes"] == 0
    ds = attacks["double_sell"]
    assert ds["successes"] >= 1 and ds["undetected"] == 0 and ds["honest_store"]["successes"] == 0, ds
    # Members in different workers traded with each other (member i is in worker i % 2).
    pairs = [(s, b) for s, row in report["matrix"].items() for b in row]
    assert any(int(s[1:]) % 2 != int(b[1:]) % 2 for s, b in pairs), pairs
    assert all(m["saving"] >= 0 for m in report["members"])
    assert report["paid_by_buyers"] == report["received_by_sellers"] > 0
    assert "session_failed" not in err  # the nodes' log lines are counted, not printed


def test_tcp_mode_keeps_neighbourhood_markets_apart_across_workers() -> None:
    code, report, err = sim("--nodes", "8", "--market-size", "4", "--hours", "2", "--start", MIDDAY,
                            "--seed", "1", "--workers", "2")
    assert code == 0, err[-2000:]
    assert report["transport"] == "tcp-loopback" and report["fidelity"]["markets"]["count"] == 2
    market = {f"m{i:04d}": i // 4 for i in range(8)}
    pairs = [(s, b) for s, row in report["matrix"].items() for b in row]
    assert pairs and all(market[s] == market[b] for s, b in pairs), pairs
    # Member i runs in worker i % 2: a market spans both workers, and its members trade over TCP.
    assert any(int(s[1:]) % 2 != int(b[1:]) % 2 for s, b in pairs), pairs


@pytest.mark.slow
def test_tcp_mode_stops_with_a_clear_message_when_the_nodes_cannot_keep_up() -> None:
    # A week at x100000 (a day in under a second) with no room to slow down.
    code, report, err = sim("--nodes", "4", "--hours", "336", "--time-scale", "100000",
                            "--min-time-scale", "100000", "--workers", "2")
    assert code == 1
    assert report["stopped"] and "cannot keep up at x100000" in report["stopped"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("p2pd sim: stopped at ") and "--min-time-scale" in last
    assert "STOPPED at" in err  # and in the readable report
    # The report covers what was simulated, and says how well.
    assert SIM_START < _unix(report["end_utc"]) < SIM_START + 336 * 3600
    assert report["fidelity"]["matchable_wh"] > 0 and report["pace"]["lag_max_s"] > pace.LAG_LIMIT_S


def _unix(utc: str) -> int:
    from datetime import datetime, timezone

    return int(datetime.strptime(utc, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc).timestamp())


def test_wall_clock_run_slows_down_then_stops_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # In this process (--memory --wall-clock), with a probe that always reports
    # a second of lag and the pacer's looks shortened: the plumbing, fast.
    monkeypatch.setattr(pace, "LOOK_S", 0.25)
    monkeypatch.setattr(pace, "SETTLE_S", 0.0)
    monkeypatch.setattr(pace.LagProbe, "take", lambda self: [1.0])
    code = cli.main(["sim", "--nodes", "3", "--hours", "744", "--memory", "--wall-clock", "--quiet",
                     "--time-scale", "8000", "--min-time-scale", "100", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)
    p = report["pace"]
    assert [c["to"] for c in p["changes"]] == [1000.0, 125.0, 100.0]  # at most 8 times slower a step
    assert all("late" in c["why"] for c in p["changes"])
    assert p["final_scale"] == 100.0 and "cannot keep up at x100 " in report["stopped"]
    assert "slowed to x100 (3 steps)" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("p2pd sim: stopped at ")


def test_virtual_time_reports_fidelity_and_no_pace() -> None:
    cfg = SimConfig(nodes=4, hours=1, start=SIM_START + 11 * 3600, memory=True, store="memory", virtual=True)
    report = run_sim(cfg)
    assert report["pace"] is None and report["stopped"] is None
    f = report["fidelity"]
    assert 0 < f["traded_wh"] <= f["matchable_wh"] and f["share"] == round(f["traded_wh"] / f["matchable_wh"], 4)


async def test_a_worker_that_dies_ends_the_run_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pd.sim import workers

    monkeypatch.setattr(workers.sys, "executable", "/bin/false")  # every worker exits at once
    cfg = SimConfig(nodes=2, hours=1)
    with trio.fail_after(30), pytest.raises(workers.WorkerFailed):
        await workers.simulate_workers(cfg, workers=2, min_time_scale=30.0)
