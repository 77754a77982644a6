"""How a simulated day scales with community size (p2pd sim, in-memory transport and stores).

Each size runs in its own process (``p2pd sim --json``) so peak RSS is per
run. Wall time alone says little, because the market clock is scaled: a day
always takes about 86400 / time_scale seconds. What degrades when the machine
is too slow is fidelity: agents tick late, offers miss gate closure, trades are
lost. So each run also reports the energy traded against the most that could
be traded (per slot, min(total surplus, total need) from the same profiles),
and the CPU seconds the run used.

A size "simulates a day in under 60 s" when its wall time is under 60 s and it
trades at least 80% of the matchable energy. Prints a summary; the last line
is one JSON object. Usage: ``python bench/sim_scale.py [--budget 180] [SIZES...]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pd.sim import SimConfig, households  # noqa: E402


def matchable_wh(nodes: int, seed: int) -> int:
    cfg = SimConfig(nodes=nodes, seed=seed)
    homes = households(cfg, 900, 0)
    total = 0
    for s in range(cfg.start, cfg.end, 900):
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


def run(nodes: int, seed: int, scale: float) -> dict[str, object]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "p2pd", "sim", "--nodes", str(nodes), "--hours", "24", "--seed", str(seed),
         "--memory", "--store", "memory", "--time-scale", str(scale), "--json", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        return {"nodes": nodes, "error": proc.stderr.strip().splitlines()[-1:]}
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    best = matchable_wh(nodes, seed)
    agents = report["agents"]
    return {
        "nodes": nodes, "wall_s": round(wall, 1), "setup_s": report["setup_s"],
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
        "peak_rss_mib": round(report["peak_rss_bytes"] / 2**20, 1),
        "traded_kwh": report["energy_traded_wh"] / 1000, "matchable_kwh": best / 1000,
        "fidelity": round(report["energy_traded_wh"] / best, 3) if best else None,
        "trades": report["trades"], "messages": report["messages"],
        "late_posts": agents.get("post_failed:EXPIRED", 0),
        "min_saving": min(m["saving"] for m in report["members"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[10, 50, 100, 200, 400])
    parser.add_argument("--budget", type=float, default=180.0, help="stop starting runs after this many s")
    parser.add_argument("--time-scale", type=float, default=2880.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    t0 = time.perf_counter()
    for n in args.sizes:
        if time.perf_counter() - t0 > args.budget:
            break
        row = run(n, args.seed, args.time_scale)
        rows.append(row)
        print(f"{n:5} nodes: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "nodes"), flush=True)
    ok = [r["nodes"] for r in rows
          if "error" not in r and r["wall_s"] < 60 and (r["fidelity"] or 0) >= 0.8]
    largest = max(ok) if ok else None
    print(f"largest community simulating a day in < 60 s with >= 80% of matchable energy traded: {largest}")
    print(json.dumps({"time_scale": args.time_scale, "runs": rows, "largest_ok": largest,
                      "bench_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
