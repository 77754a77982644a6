"""Ctrl-C or SIGTERM ends a long ``p2pd sim`` early, and it still reports what it simulated.

Real processes: the command as a user runs it, the signal as a terminal or
``kill`` sends it. The report (JSON on stdout with ``--json``) covers the
slots finished, says why it stopped, and the exit status is the shell's for
that signal (128 + its number).
"""

from __future__ import annotations

import json
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


@pytest.mark.parametrize(("mode", "sig", "started"), [
    # Virtual time, a week: interrupted once the progress line shows a tenth of it done.
    (["--memory", "--nodes", "8", "--hours", "168"], signal.SIGINT, r"\] +(1\d|[2-9]\d)% sim"),
    # Loopback TCP in two worker processes, four slots a second: interrupted after the start.
    (["--workers", "2", "--nodes", "4", "--hours", "24", "--time-scale", "3600"], signal.SIGTERM, r"\] +\d+% sim"),
])
def test_an_interrupted_run_reports_the_slots_it_finished(mode: list[str], sig: signal.Signals,
                                                          started: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "p2pd", "sim", "--start", START, "--json", *mode],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(proc, started, within=60)
    if "--workers" in mode:
        time.sleep(2)  # a few slots of trading
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
