"""The code type-checks under ``mypy --strict`` (STYLE.md rule 10, pyproject's [tool.mypy])."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_packages_pass_mypy_strict(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
         "protocol", "store", "meter_drivers", "paho_trio", "p2pd"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
