"""How a simulated day scales with community size (p2pd sim, in-memory streams and stores).

Each size runs in its own process (``p2pd sim --memory --json``, virtual time)
so CPU and peak RSS are per run. In virtual time a run's outcome does not
depend on the machine's speed: the wall time is the CPU work of the day, and
fidelity (the energy traded against the most that could be traded: per slot,
min(total surplus, total need) from the same profiles) is what the protocol
and the agents achieve, not what the scheduler let through.

A size "simulates a day in under 60 s" when its run finishes under 60 s of
wall time and trades at least 80% of the matchable energy. A run that passes
``--limit`` seconds is stopped; its last progress line says how far it got
(simulated time, trades, kWh taken so far, which counts future slots too).
Prints a summary; the last line is one JSON object.

Usage: ``python bench/sim_scale.py [--limit 60] [--budget 240] [--wall-clock] [SIZES...]``
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pd.sim.community import SIM_START, SimConfig, households  # noqa: E402

PROGRESS = re.compile(r"(\d+)% sim (\d\d):(\d\d) UTC, (\d+) trades, ([\d.]+) kWh")


def matchable_wh(nodes: int, seed: int, until: int | None = None) -> int:
    """The most energy the community could trade in [start, until) (default: the day)."""
    cfg = SimConfig(nodes=nodes, seed=seed)
    homes = households(cfg, 900, 0)
    total = 0
    for s in range(cfg.start, until or cfg.end, 900):
        surplus = need = 0
        for h in homes:
            a, b = h.reading_at(s), h.reading_at(s + 900)
            net = (b.export_wh - a.export_wh) - (b.import_wh - a.import_wh)
            if net >= cfg.agent.min_wh:
                surplus += net
            elif -net >= cfg.agent.min_wh:
                need += -net
        total += min(surplus, need)
    return total


def run(nodes: int, seed: int, limit: float, wall_clock: bool) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "p2pd", "sim", "--nodes", str(nodes), "--hours", "24", "--seed", str(seed),
           "--memory", "--store", "memory", "--json"]
    if wall_clock:
        cmd.append("--wall-clock")
    t0 = time.perf_counter()
    finished = True
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # killed, and waited for: its rusage counts
        finished = False
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row: dict[str, Any] = {
        "nodes": nodes, "finished": finished, "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
    }
    if not finished:
        last = PROGRESS.findall(err)
        if last:
            pct, hh, mm, trades, kwh = last[-1]
            reached = SIM_START + int(hh) * 3600 + int(mm) * 60
            best = matchable_wh(nodes, seed, reached)
            row.update({"reached_utc": f"{hh}:{mm}", "trades_so_far": int(trades),
                        "taken_kwh_so_far": float(kwh), "matchable_kwh_so_far": best / 1000})
        row["peak_rss_mib"] = round(after.ru_maxrss / 1024, 1)  # largest child so far (Linux: KiB)
        return row
    if proc.returncode != 0:
        row["error"] = err.strip().splitlines()[-1:]
        return row
    report = json.loads(out.strip().splitlines()[-1])
    best = matchable_wh(nodes, seed)
    agents = report["agents"]
    row.update({
        "setup_s": report["setup_s"], "peak_rss_mib": round(report["peak_rss_bytes"] / 2**20, 1),
        "trades": report["trades"], "traded_kwh": report["energy_traded_wh"] / 1000,
        "matchable_kwh": best / 1000,
        "share_traded": round(report["energy_traded_wh"] / best, 3) if best else None,
        "messages": report["messages"], "late_posts": agents.get("post_failed:EXPIRED", 0),
        "min_saving": min(m["saving"] for m in report["members"]),
    })
    return row


def line(row: dict[str, Any]) -> str:
    n = row["nodes"]
    if "error" in row:
        return f"{n:5} nodes: error {row['error']}"
    head = f"{n:5} nodes: wall {row['wall_s']:6.1f} s, CPU {row['cpu_s']:6.1f} s, RSS {row['peak_rss_mib']:5.0f} MiB"
    if not row["finished"]:
        return (f"{head}, stopped at sim {row.get('reached_utc', '?')} UTC: "
                f"{row.get('trades_so_far', '?')} trades, {row.get('taken_kwh_so_far', '?')} kWh taken "
                f"(matchable by then {row.get('matchable_kwh_so_far', '?')} kWh)")
    return (f"{head}, {row['trades']} trades, {row['traded_kwh']:.1f} / {row['matchable_kwh']:.1f} kWh "
            f"matchable = {100 * (row['share_traded'] or 0):.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[10, 20, 30, 50, 200])
    parser.add_argument("--limit", type=float, default=60.0, help="stop a run after this many s")
    parser.add_argument("--budget", type=float, default=240.0, help="start no run after this many s")
    parser.add_argument("--wall-clock", action="store_true", help="scaled wall clock instead of virtual time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    t0 = time.perf_counter()
    for n in args.sizes:
        if time.perf_counter() - t0 > args.budget:
            break
        row = run(n, args.seed, args.limit, args.wall_clock)
        rows.append(row)
        print(line(row), flush=True)
    ok = [r["nodes"] for r in rows if r.get("finished") and "error" not in r
          and r["wall_s"] < 60 and (r["share_traded"] or 0) >= 0.8]
    largest = max(ok) if ok else None
    print(f"largest community simulating a day in < 60 s with >= 80% of matchable energy traded: {largest}")
    print(json.dumps({"time": "wall-clock" if args.wall_clock else "virtual", "seed": args.seed,
                      "limit_s": args.limit, "runs": rows, "largest_n_day_under_60s": largest,
                      "bench_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
