"""End-to-end tests on the simulation harness: real nodes, sessions, agents and stores.

Most run in virtual time (pytest-trio's ``autojump_clock``, as ``p2pd sim
--memory`` does); the loopback TCP + SQLite one runs on trio's real clock with
a fast market clock (``time_scale``). Every wait is bounded.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
import trio

from p2pd.cli import main as cli
from p2pd.sim.attacks import ATTACKS, run_attacks
from p2pd.sim.build import open_community
from p2pd.sim.community import SIM_START, SimConfig, SimError, topology
from p2pd.sim.report import settle_window
from p2pd.sim.results import SIM_GC_THRESHOLD, summed
from p2pd.sim.run import run_sim

MIDDAY = SIM_START + 10 * 3600  # 10:00 on a midsummer day: PV surplus and demand


def config(**kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(nodes=6, hours=2, start=MIDDAY, memory=True, store="memory",
                                virtual=True, seed=7)
    return SimConfig(**{**base, **kw})


async def test_small_community_trades_and_everyone_saves(autojump_clock: trio.abc.Clock) -> None:
    cfg = config()
    with trio.fail_after(3 * 3600):  # virtual seconds
        async with open_community(config=cfg) as com:
            assert all(len(s.node.sessions) >= 1 for s in com.nodes)
            await com.wait_until(cfg.end)
            receipts = com.receipts()
            homes = [s.household for s in com.nodes if s.household is not None]
    acc = settle_window(homes, receipts, cfg.start, cfg.end, 900)
    assert acc.trades > 0 and acc.delivered_wh > 0
    assert all(m.saving >= 0 for m in acc.members)
    assert acc.paid_by_buyers == acc.received_by_sellers > 0
    assert sum(m.bought_wh for m in acc.members) == sum(m.sold_wh for m in acc.members) == acc.delivered_wh
    # Receipts agree between the two parties' stores.
    assert len({r.trade_id for r in receipts}) == len(receipts)


async def test_tcp_loopback_with_sqlite_stores() -> None:
    cfg = config(nodes=4, hours=1, memory=False, store="sqlite", virtual=False, time_scale=3600.0)
    with trio.fail_after(30):
        async with open_community(config=cfg) as com:
            assert all(s.address is not None for s in com.nodes)
            await com.wait_until(cfg.end)
            receipts = com.receipts()
            for sim in com.nodes:
                assert sim.repo.integrity_check() == "ok"
    assert receipts, "no trade over TCP in an hour of midday"


async def test_attacks_of_the_mitigated_threats_achieve_nothing(autojump_clock: trio.abc.Clock) -> None:
    cfg = config(nodes=5, hours=1)
    out: dict[str, dict[str, Any]] = {}
    with trio.fail_after(24 * 3600):  # virtual seconds
        async with open_community(config=cfg) as com:
            await run_attacks(com, tuple(ATTACKS), out)
    for name in ("impersonation", "sybil", "tamper", "replay"):
        assert out[name]["attempts"] > 0 and out[name]["successes"] == 0, (name, out[name])
    ds = out["double_sell"]
    assert ds["honest_store"]["successes"] == 0
    assert ds["successes"] >= 1 and ds["undetected"] == 0  # the cheat is caught from receipts
    flood = out["flood"]
    if "unavailable" not in flood:
        assert flood["successes"] == 0 and flood.get("banned") and not flood["reconnected_while_banned"], flood
    hf = out["handshake_flood"]
    assert hf["attempts"] > 0 and hf["target_sessions"] > 0  # existing sessions survive
    assert out["equivocation"]["attempts"] > 0 and out["equivocation"]["successes"] == 0
    assert "unavailable" in out["broker_crash"]  # S1 has no broker; see test_sim_scenarios.py


def test_unknown_scenarios_and_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SimError, match="unknown scenario"):
        SimConfig(scenario="S9")
    assert cli.main(["sim", "--attack", "nonsense"]) == 2
    assert "unknown attack" in capsys.readouterr().err
    with pytest.raises(SimError):
        SimConfig(store="postgres")


def test_cli_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sim", "--nodes", "4", "--hours", "1", "--seed", "3", "--memory", "--start", "2026-06-21T10:00",
                     "--json", "--quiet", "--attack", "sybil"])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 1  # stdout is the JSON report only: `p2pd sim --json | jq` works
    report = json.loads(out[0])
    for key in ("energy_traded_wh", "trades", "members", "attacks", "wall_s", "peak_rss_bytes"):
        assert key in report
    assert {"bill_baseline", "bill_p2p", "saving"} <= set(report["members"][0])
    assert report["attacks"]["sybil"]["successes"] == 0
    assert report["time"] == "virtual" and report["store"] == "memory"
    assert "Bills" in captured.err and "fidelity" in captured.err  # the readable report, on stderr
    attacks = captured.err[captured.err.index("Attacks"):]
    assert "by kind: untrusted issuer 0, expired 0" in attacks and "{" not in attacks  # words, not dicts
    f = report["fidelity"]
    assert 0 < f["traded_wh"] == report["energy_traded_wh"] <= f["matchable_wh"] and 0 < f["share"] <= 1


def test_virtual_time_run_repeats_for_a_seed() -> None:
    cfg = config(nodes=8, hours=3)

    def outcome(report: dict[str, Any]) -> tuple[Any, ...]:
        return (report["trades"], report["energy_traded_wh"], report["paid_by_buyers"],
                [(m["member"], m["bought_wh"], m["sold_wh"], m["saving"]) for m in report["members"]])

    first, second = run_sim(cfg), run_sim(cfg)
    assert first["time"] == "virtual" and first["trades"] > 0
    assert outcome(first) == outcome(second)
    other = run_sim(config(nodes=8, hours=3, seed=8))
    assert outcome(other) != outcome(first)


def test_a_run_collects_cycles_rarely_and_the_caller_keeps_its_collector() -> None:
    # A simulated community spends a quarter of its CPU in the cyclic
    # collector at the default thresholds (docs/simulation.md); a caller that
    # embeds run_sim (the tests, a notebook) gets its own settings back.
    before = gc.get_threshold()
    assert before != SIM_GC_THRESHOLD
    during: list[tuple[int, int, int]] = []
    report = run_sim(config(nodes=3, hours=1), progress=lambda look: during.append(gc.get_threshold()))
    assert report["time"] == "virtual" and during and set(during) == {SIM_GC_THRESHOLD}
    assert gc.get_threshold() == before


async def test_virtual_time_needs_the_autojump_clock() -> None:
    with pytest.raises(SimError, match="MockClock"):
        async with open_community(config=config()):
            pass  # pragma: no cover
    with pytest.raises(SimError, match="in-memory"):
        config(store="sqlite")


def test_a_warm_up_trades_before_the_window_and_the_report_covers_only_the_window() -> None:
    cold = run_sim(config(hours=1), plot=True)
    warm = run_sim(config(hours=1, warmup=3600), plot=True)
    assert warm["start_utc"] == cold["start_utc"] == "2026-06-21 10:00" and warm["warmup_min"] == 60
    # The same households over the same window: only the agents' head start differs.
    assert warm["fidelity"]["matchable_wh"] == cold["fidelity"]["matchable_wh"]
    assert warm["pv_production_wh"] == cold["pv_production_wh"]
    assert warm["energy_traded_wh"] > 0
    assert all(MIDDAY <= int(s) < MIDDAY + 3600 for s in warm["plot_data"]["traded_by_slot"])


@pytest.mark.parametrize("minutes", [10, -15, 1455])
def test_a_warm_up_is_whole_slots_and_at_most_a_day(minutes: int) -> None:
    with pytest.raises(SimError, match="--warm-up must be whole quarter hours"):
        config(warmup=60 * minutes)


@pytest.mark.parametrize(("nodes", "size", "sizes"), [(12, 6, [6, 6]), (200, 50, [50] * 4),
                                                     (203, 50, [51, 51, 51, 50]), (10, 3, [4, 3, 3]), (10, 10, [10])])
def test_neighbourhood_markets_share_no_session(nodes: int, size: int, sizes: list[int]) -> None:
    cfg = config(nodes=nodes, market_size=size)
    assert cfg.markets == len(sizes)
    members: dict[int, list[int]] = {}
    for i in range(nodes):
        members.setdefault(cfg.market_of(i), []).append(i)
    assert [len(m) for m in members.values()] == sizes  # contiguous, near-equal
    pairs = topology(cfg.seed, nodes, cfg.degree, cfg.markets)
    assert pairs and all(cfg.market_of(i) == cfg.market_of(j) for i, j in pairs)
    # Every member dials or is dialled inside its market.
    assert {i for pair in pairs for i in pair} == set(range(nodes))
    # One market: the mesh of every household, as without the option.
    whole = topology(cfg.seed, nodes, cfg.degree)
    assert (pairs == whole) == (cfg.markets == 1)
    assert cfg.markets == 1 or any(cfg.market_of(i) != cfg.market_of(j) for i, j in whole)


def test_neighbourhood_markets_trade_inside_and_report_both_bounds() -> None:
    report = run_sim(config(nodes=12, market_size=6, hours=2))
    market = {f"m{i:04d}": i // 6 for i in range(12)}
    pairs = [(s, b) for s, row in report["matrix"].items() for b in row]
    assert pairs and all(market[s] == market[b] for s, b in pairs)
    assert {market[s] for s, _ in pairs} == {0, 1}  # both markets traded
    f = report["fidelity"]
    inside = f["markets"]
    assert inside["count"] == 2 and inside["size"] == 6 and inside["traded_wh"] == f["traded_wh"] > 0
    # Separate markets can match no more than one market of everyone.
    assert 0 < inside["matchable_wh"] <= f["matchable_wh"] and inside["share"] >= f["share"]
    assert "markets" not in run_sim(config(nodes=12, hours=1))["fidelity"]


def test_neighbourhood_markets_run_on_every_core_and_repeat_for_a_seed() -> None:
    cfg = config(nodes=12, market_size=4, hours=2)  # three markets over two processes: 0 and 2, then 1
    first = run_sim(cfg, workers=2)
    assert first["workers"] == 2 and len(first["worker_cpu_s"]) == 2 and first["time"] == "virtual"
    market = {f"m{i:04d}": i // 4 for i in range(12)}
    sellers = {market[s] for s, row in first["matrix"].items() for b in row if market[b] == market[s]}
    assert 1 in sellers and sellers & {0, 2}  # both processes' markets traded
    assert all(market[s] == market[b] for s, row in first["matrix"].items() for b in row)
    assert first["fidelity"]["markets"]["count"] == 3
    again = run_sim(cfg, workers=2)
    assert (again["trades"], again["energy_traded_wh"], again["members"]) == (
        first["trades"], first["energy_traded_wh"], first["members"])


def test_the_workers_counters_add_up_key_by_key() -> None:
    assert summed({"a": 1, "b": 0}, {"a": 2, "c": 5}, {}) == {"a": 3, "b": 0, "c": 5}
    assert summed() == {}
