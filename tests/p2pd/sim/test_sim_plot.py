"""``p2pd sim --plot FILE.png`` draws the simulated day as a real PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_of_the_day(tmp_path: Path) -> None:
    out = tmp_path / "day.png"
    cmd = [sys.executable, "-m", "p2pd", "sim", "--nodes", "4", "--scenario", "S1", "--hours", "12",
           "--seed", "3", "--memory", "--store", "memory", "--quiet", "--json", "--plot", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 4
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # axes, lines and bars, not an empty canvas
