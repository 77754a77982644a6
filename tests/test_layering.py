"""Imports flow one way (STYLE.md rules 1 and 7), checked on the source AST.

* protocol/ is sans-IO: it never imports trio, asyncio, socket, time,
  sqlalchemy, or the other packages.
* store/ and meter_drivers/ never import p2pd/ or each other, nor protocol/.
* Nothing below p2pd imports p2pd.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "protocol": {"trio", "asyncio", "socket", "time", "sqlalchemy", "p2pd", "store", "meter_drivers",
                 "selectors", "threading"},
    "store": {"p2pd", "protocol", "meter_drivers", "trio"},
    "meter_drivers": {"p2pd", "protocol", "store"},
}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_flow_one_way(package: str) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_modules(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"forbidden imports: {offenders}"


def test_the_check_would_catch_a_violation(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import trio\nfrom p2pd.net.node import Node\nimport os.path\n")
    assert imported_modules(sample) >= {"trio", "p2pd", "os"}


def test_daemon_and_benchmarks_use_only_the_packages_public_names() -> None:
    """STYLE.md rule 7: outside a package, import what its __init__ exports.

    (Tests may reach into a package's modules to test them.)
    """
    offenders = []
    for path in sorted([*(ROOT / "p2pd").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top, _, rest = node.module.partition(".")
                if top in FORBIDDEN and rest:
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top, _, rest = alias.name.partition(".")
                    if top in FORBIDDEN and rest:
                        offenders.append(f"{path.relative_to(ROOT)}: import {alias.name}")
    assert not offenders, offenders
