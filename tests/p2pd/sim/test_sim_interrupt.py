"""Ctrl-C or SIGTERM ends a long ``p2pd sim`` early, and it still reports what it simulated.

Real processes: the command as a user runs it, the signal as a terminal or
``kill`` sends it. The report (JSON on stdout with ``--json``) covers the
slots finished, says why it stopped, and the exit status is the shell's for
that signal (128 + its number).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from p2pd_test_helpers import read_until

ROOT = Path(__file__).resolve().parents[3]
START = "2026-06-21T10:00"


def wait_for(proc: subprocess.Popen[str], pattern: str, within: float) -> str:
    """Read ``proc``'s stderr until ``pattern`` appears; what was read. Fails after ``within`` s."""
    assert proc.stderr is not None
    seen = re.compile(pattern.encode())
    text, found = read_until(proc.stderr.fileno(), lambda got: seen.search(got) is not None, within=within)
    if not found:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no {pattern!r} on stderr within {within} s: {text[-500:]!r}")
    return text.decode(errors="replace")


TENTH = r"\] +(1\d|[2-9]\d)% sim"  # the progress line shows a tenth of the run done


@pytest.mark.parametrize(("mode", "sig", "started", "group"), [
    # Virtual time, a week: interrupted once a tenth of it is done.
    (["--memory", "--nodes", "8", "--hours", "168"], signal.SIGINT, TENTH, False),
    # Two neighbourhood markets in two processes: Ctrl-C in a terminal reaches every process of its
    # group; `kill` only the one named.
    (["--memory", "--nodes", "8", "--market-size", "4", "--hours", "168"], signal.SIGINT, TENTH, True),
    (["--memory", "--nodes", "8", "--market-size", "4", "--hours", "168"], signal.SIGTERM, TENTH, False),
    # Loopback TCP in two worker processes, four slots a second: interrupted after the start.
    (["--workers", "2", "--nodes", "4", "--hours", "24", "--time-scale", "3600"], signal.SIGTERM, r"\] +\d+% sim",
     False),
])
def test_an_interrupted_run_reports_the_slots_it_finished(mode: list[str], sig: signal.Signals,
                                                          started: str, group: bool) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "p2pd", "sim", "--start", START, "--json", *mode],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=group)
    wait_for(proc, started, within=60)
    if "--workers" in mode:
        time.sleep(2)  # a few slots of trading
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["stopped"] == f"interrupted ({sig.name})"
    assert f"p2pd sim: stopped at {report['end_utc']} UTC: interrupted ({sig.name})" in err
    # The report covers whole slots from the start up to where the run was, not the whole run.
    assert "2026-06-21 10:00" <= report["end_utc"] < ("2026-06-28 10:00" if "168" in mode else "2026-06-22 10:00")
    assert report["fidelity"]["traded_wh"] == report["energy_traded_wh"] <= report["fidelity"]["matchable_wh"]
    if "--memory" in mode:  # a tenth of a week from 10:00 holds a midsummer afternoon of trading
        assert report["end_utc"] >= "2026-06-22 02:45" and report["trades"] > 0
    if "--market-size" in mode:  # both markets ran, each in its own process, and both traded
        assert report["workers"] == len(report["worker_cpu_s"]) == 2 and min(report["worker_cpu_s"]) > 0
        assert {seller[-1] in "0123" for seller in report["matrix"]} == {True, False}


def test_a_market_worker_that_dies_ends_the_run_in_one_line_and_takes_no_other_worker_along() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "p2pd", "sim", "--start", START, "--memory", "--nodes", "8",
                             "--market-size", "4", "--hours", "168"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(proc, TENTH, within=60)
    workers = children(proc.pid)
    assert len(workers) >= 2, workers  # the two market workers (and multiprocessing's tracker, if any)
    victim = max(workers)
    os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and out == ""
    assert err.rstrip().splitlines()[-1].startswith("p2pd: error: market worker"), err[-1000:]
    assert "ended without a result (killed by SIGKILL)" in err
    # Gone within seconds (the kernel may still be tearing one down as the coordinator exits).
    for _ in range(200):
        alive = [pid for pid in workers if not gone(pid)]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, [Path(f"/proc/{pid}/stat").read_text() for pid in alive]


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        out += [int(c) for c in text.split()]
    return out


def gone(pid: int) -> bool:
    """``pid`` has ended (or is a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
