"""Issue 15, point 8: the package's name, version, documentation and shell completion, as installed.

"p2pd" on the Python package index is an unrelated project: the distribution
is p2pd-energy, the commands p2pd and p2pctl. The unit's Documentation= must
point at files the package installs, and the completion script must know the
commands' real subcommands.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import p2pd

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def command(name: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", "p2pd" if name == "p2pd"
                                                   else "p2pd.cli.ctl"]


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload,no-any-return]


def test_the_distribution_is_not_the_package_index_p2pd() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == p2pd.DISTRIBUTION == "p2pd-energy"
    assert set(project["scripts"]) == {"p2pd", "p2pctl"}
    assert importlib.metadata.version(p2pd.DISTRIBUTION) == p2pd.__version__
    # Nothing tells people to install the other project's name.
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "store").glob("*.py"),
                 *(ROOT / "p2pd").rglob("*.py")]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "never" not in line.lower():
                assert not re.search(r"pip(x)? install '?p2pd(\[|'|\s|$)", line), (path, line)


@pytest.mark.slow
def test_version_flags() -> None:
    for name in ("p2pd", "p2pctl"):
        done = run(*command(name), "--version")
        assert (done.returncode, done.stdout) == (0, f"{name} {p2pd.__version__} (p2pd-energy)\n")


@pytest.mark.slow
def test_the_units_documentation_is_installed_with_the_package(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "p2pd.service").read_text()
    venv = re.search(r"^ExecStart=(\S+)/bin/p2pd ", unit, re.M)
    assert venv is not None
    docs = re.findall(r"^Documentation=(\S+)$", unit, re.M)
    prefix = f"file://{venv.group(1)}/share/doc/p2pd/"
    assert docs and all(d.startswith(prefix) for d in docs), docs
    # From a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".hypothesis", "tests", "bench"))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src))
    if built.returncode != 0 and "setuptools" in built.stderr and "No matching distribution" in built.stderr:
        pytest.skip("cannot build a wheel here: no setuptools for the build environment")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("p2pd_energy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        readme = z.read(f"p2pd_energy-{p2pd.__version__}.data/data/share/doc/p2pd/README.md").decode()
    data = f"p2pd_energy-{p2pd.__version__}.data/data/share/doc/p2pd/"
    for doc in docs:
        assert data + doc.removeprefix(prefix) in names, doc
    # What the README's installation takes from $doc, and every document it links.
    needed = set(re.findall(r"\$doc/([\w/-]+\.\w+)", readme)) | set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    assert {"systemd/p2pd.service", "systemd/p2pd.sysusers", "examples/p2pd.toml"} <= needed
    assert {n for n in needed if data + n not in names} == set()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion(tmp_path: Path) -> None:
    done = run(*command("p2pd"), "completion", "bash")
    assert done.returncode == 0, done.stderr
    script = tmp_path / "p2pd.bash"
    script.write_text(done.stdout)
    (tmp_path / "list.rl").write_text("")
    cases = {
        "p2pctl po": "post",
        "p2pctl post ''": "buy sell",
        "p2pctl --socket /tmp/x st": "statements status",
        "p2pctl statements --period ''": "day month slot",
        "/usr/local/bin/p2pd revocation ''": "issue show",
        "p2pd revocation issue --se": "--serial",
        "p2pd completion ''": "bash",
        "p2pctl revoke li": "list.rl",
        "p2pd --ver": "--version",
    }
    lines = [f"source {script}",
             'comp() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); '
             '_p2pd_complete; printf "%s\\n" "$(printf "%s\\n" "${COMPREPLY[@]}" | sort | paste -sd " ")"; }']
    lines += [f"comp {words}" for words in cases]
    got = run("bash", "--norc", "-c", "\n".join(lines), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert dict(zip(cases, got.stdout.splitlines(), strict=True)) == cases
