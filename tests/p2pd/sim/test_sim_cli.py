"""``p2pd sim`` refuses what it cannot do before it starts, and writes what it did: JSON, CSV, matrix.

Refusals are one line on stderr with exit status 2, and nothing is
simulated (``run_sim`` is replaced by a function that fails the test).
The runs are small communities in virtual time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from p2pd.cli import main as cli
from p2pd.sim import run as sim_run


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the run started")

    monkeypatch.setattr(sim_run, "run_sim", refuse)


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "5000"], "--nodes must be between 2 and 1000 (got 5000)"),
    (["--nodes", "1"], "--nodes must be between 2 and 1000 (got 1)"),
    (["--nodes", "0"], "--nodes must be between 2 and 1000 (got 0)"),
    (["--nodes", "-3"], "--nodes must be between 2 and 1000 (got -3)"),
    (["--hours", "0"], "--hours must be between 0.25 (one slot) and 744 (a month) (got 0)"),
    (["--hours", "800"], "--hours must be between 0.25 (one slot) and 744 (a month) (got 800)"),
    (["--hours", "0.1"], "--hours must be between 0.25"),
    (["--start", "2026-13-01"], "--start '2026-13-01': expected YYYY-MM-DD"),
    (["--start", "2026-06-21T10:07"], "--start must be on a quarter hour"),
    (["--start", "1970-01-01"], "the year must be between 2000 and 2100"),
    (["--workers", "0"], "--workers must be between 1 and 64 (got 0)"),
    (["--memory", "--workers", "2"], "--workers is for the loopback TCP mode, or for --market-size in virtual"),
    (["--memory", "--wall-clock", "--market-size", "5", "--workers", "2"], "--workers is for the loopback TCP"),
    (["--time-scale", "0"], "--time-scale must be between 1 and 100000"),
    (["--min-time-scale", "5000"], "--min-time-scale must be between 1 and --time-scale (2880)"),
    (["--degree", "0"], "--degree must be between 1 and 64"),
    (["--market-size", "1"], "--market-size must be between 2 and --nodes (10) (got 1)"),
    (["--market-size", "11"], "--market-size must be between 2 and --nodes (10) (got 11)"),
    (["--market-size", "5", "--scenario", "S2"], "--market-size is for S1"),
    (["--warm-up", "10"], "--warm-up must be whole quarter hours, at most a day (got 10 min)"),
    (["--plot", "/nonexistent-dir/day.png"], "--plot /nonexistent-dir/day.png: no directory /nonexistent-dir"),
    (["--plot", "day.xyz"], "--plot day.xyz: unknown format 'xyz'"),
    (["--plot", "day"], "unknown format '(no extension)'"),
    (["--profiles", "/nonexistent-dir"], "--profiles /nonexistent-dir: not a directory"),
])
def test_bad_options_are_refused_in_one_line_before_the_run(
        args: list[str], message: str, no_run: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("p2pd: error: ") and message in err, err


def test_plot_into_a_directory_or_an_unwritable_place_is_refused(
        tmp_path: Path, no_run: None, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.png").mkdir()
    assert cli.main(["sim", "--plot", str(tmp_path / "d.png")]) == 2
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli.main(["sim", "--csv", str(tmp_path / "file" / "out")]) == 2
    assert "--csv" in capsys.readouterr().err
    assert cli.main(["sim", "--plot", str(tmp_path / "file" / "run.png")]) == 2
    assert "no directory" in capsys.readouterr().err


def test_csv_and_matrix_account_for_every_trade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "csv"
    code = cli.main(["sim", "--nodes", "5", "--hours", "2", "--start", "2026-06-21T10:00", "--seed", "3",
                     "--memory", "--quiet", "--json", "--csv", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    members = {m["member"]: m for m in report["members"]}

    # The matrix in the JSON: rows are sellers, columns buyers; it adds up to the accounts.
    matrix = report["matrix"]
    cells = [(s, b, c) for s, row in matrix.items() for b, c in row.items()]
    assert sum(c["wh"] for _, _, c in cells) == report["energy_traded_wh"] > 0
    assert sum(c["money"] for _, _, c in cells) == report["paid_by_buyers"]
    assert sum(c["trades"] for _, _, c in cells) == report["trades"]
    for m, acct in members.items():
        assert sum(c["wh"] for s, _, c in cells if s == m) == acct["sold_wh"]
        assert sum(c["wh"] for _, b, c in cells if b == m) == acct["bought_wh"]
    assert all(s != b for s, b, _ in cells)

    def rows(name: str) -> list[dict[str, str]]:
        with open(out / name, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    trades = rows("trades.csv")
    assert len(trades) == report["trades"]
    assert sum(int(t["delivered_wh"]) for t in trades) == report["energy_traded_wh"]
    assert sum(int(t["amount"]) for t in trades) == report["paid_by_buyers"]
    assert {t["seller"] for t in trades} | {t["buyer"] for t in trades} <= set(members)
    energy = rows("energy.csv")
    assert len(energy) == 5 * 8  # members x slots
    for m, acct in members.items():
        mine = [r for r in energy if r["member"] == m]
        assert sum(int(r["import_wh"]) for r in mine) == acct["import_wh"]
        assert sum(int(r["bought_wh"]) for r in mine) == acct["bought_wh"]
        assert sum(int(r["bill_p2p"]) for r in mine) == acct["bill_p2p"]
        # PV per slot is floored to whole Wh: the slots' sum is at most a Wh per slot short.
        assert acct["pv_wh"] - len(mine) <= sum(int(r["pv_wh"]) for r in mine) <= acct["pv_wh"]
    bills = rows("bills.csv")
    assert [b["member"] for b in bills] == list(members)
    assert [int(b["saving"]) for b in bills] == [m["saving"] for m in members.values()]
    assert len(rows("matrix.csv")) == len(cells)


def test_a_plot_that_fails_after_the_run_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from p2pd.sim import plot

    def broken(report: dict[str, Any], path: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(plot, "plot_run", broken)
    code = cli.main(["sim", "--nodes", "3", "--hours", "1", "--start", "2026-06-21T11:00", "--memory",
                     "--quiet", "--json", "--plot", str(tmp_path / "run.png")])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["nodes"] == 3  # the report is out
    assert captured.err.strip().splitlines()[-1] == f"p2pd: error: --plot {tmp_path / 'run.png'}: disk full"


class _Started(Exception):
    pass


@pytest.mark.parametrize(("args", "noted"), [
    (["--nodes", "201"], True),
    (["--nodes", "200"], False),
    (["--nodes", "1000", "--market-size", "50"], False),
])
def test_a_large_single_market_is_told_its_cost_and_the_way_out(
        args: list[str], noted: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def started(*a: Any, **kw: Any) -> dict[str, Any]:
        raise _Started

    monkeypatch.setattr(sim_run, "run_sim", started)
    with pytest.raises(_Started):
        cli.main(["sim", "--memory", "--quiet", *args])
    err = capsys.readouterr().err
    assert ("every offer reaches every node" in err and "--market-size 50" in err) == noted, err
