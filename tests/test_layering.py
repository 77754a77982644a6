"""Imports flow one way (STYLE.md rules 1 and 7), checked on the source AST.

* protocol/ and p2pd/market/ are sans-IO: no trio, asyncio, socket, clock,
  randomness, database, or anything of the glue rooms.
* store/ and meter_drivers/ never import p2pd/ or each other, nor protocol/.
* paho_trio/ (MQTT on trio, shared by meter_drivers/ and p2pd/) imports none
  of our packages.
* p2pd/'s rooms import downwards only (:data:`ROOM_MAY_IMPORT`): market <
  net < roles < control < components < daemon < sim < cli. Nothing but the
  CLI imports the simulator; net/ never imports roles/.
* No import cycles anywhere in the packages, counting imports made only for
  type checking.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "store", "meter_drivers", "paho_trio", "p2pd")

SANS_IO = {"trio", "asyncio", "socket", "time", "sqlalchemy", "selectors", "threading", "os",
           "random", "secrets", "subprocess", "store", "meter_drivers"}
FORBIDDEN = {
    "protocol": SANS_IO | {"p2pd"},
    "p2pd/market": SANS_IO,
    "store": {"p2pd", "protocol", "meter_drivers", "trio"},
    "meter_drivers": {"p2pd", "protocol", "store"},
    "paho_trio": {"p2pd", "protocol", "store", "meter_drivers"},
}

# The room of a p2pd module: its folder, or for top-level modules the module.
BASE = {"errors", "log", "clock", "events", "storage"}
ROOM_MAY_IMPORT: dict[str, set[str]] = {
    "market": {"market"},
    **{b: BASE for b in BASE},
    # Trade errors wrap the market's Refusal.
    "errors": {"market"},
    "config": {"config", "market"} | BASE,
    "notify": BASE,
    "net": {"net", "market"} | BASE,
    "roles": {"roles", "net", "market", "config"} | BASE,
    # The JSON-RPC server (server, jsonrpc, unix) knows nothing of p2pd;
    # context.py uses its type.
    "control.server": BASE | {"control.server"},
    "context": {"config", "net", "control.server", "notify"} | BASE,
    "control": {"control", "context", "roles", "net", "market", "config"} | BASE,
    # Read-only views of the node (summary, Home Assistant, dashboard, metrics).
    "views": {"views", "context", "control", "roles", "net", "market", "config", "notify"} | BASE,
    "components": {"components", "views", "context", "control", "roles", "net", "market", "config",
                   "notify"} | BASE,
    "daemon": {"context", "components", "views", "control", "roles", "net", "market", "config",
               "notify"} | BASE,
    "sim": {"sim", "daemon", "context", "components", "views", "control", "roles", "net", "market",
            "config", "notify"} | BASE,
    "cli": {"cli", "sim", "daemon", "context", "components", "views", "control", "roles", "net", "market",
            "config", "notify"} | BASE,
    "__main__": {"cli"},
}
for _allowed in ROOM_MAY_IMPORT.values():
    if "control" in _allowed:
        _allowed.add("control.server")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: pathlib.Path, known: set[str]) -> set[str]:
    """Modules of ``known`` (or top-level names otherwise) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in targets:
            # The longest known module the name starts with; else its top level.
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in known:
                    found.add(".".join(parts[:i]))
                    break
            else:
                found.add(parts[0])
    return found


GENERIC_CONTROL = {"p2pd.control.server", "p2pd.control.jsonrpc", "p2pd.control.unix"}


def room_of(module: str) -> str:
    parts = module.split(".")
    if module in GENERIC_CONTROL:
        return "control.server"
    return parts[1] if len(parts) > 1 else "p2pd"


MODULES = all_modules()
GRAPH = {m: imports_of(p, set(MODULES)) - {m} for m, p in MODULES.items()}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_flow_one_way(package: str) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = {name.split(".")[0] for name in imports_of(path, set())} & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"forbidden imports: {offenders}"


def test_p2pd_rooms_import_downwards_only() -> None:
    offenders = []
    for module, deps in sorted(GRAPH.items()):
        if not module.startswith("p2pd.") or module == "p2pd":
            continue
        room = room_of(module)
        allowed = ROOM_MAY_IMPORT.get(room)
        assert allowed is not None, f"{module}: room {room!r} has no rule in ROOM_MAY_IMPORT"
        for dep in sorted(d for d in deps if d.startswith("p2pd.")):
            if dep != "p2pd" and room_of(dep) not in allowed:
                offenders.append(f"{module} -> {dep}")
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # A package's __init__ re-exporting its modules is not a cycle of design.
    cycles = [c for c in cycles if not _only_package_reexports(c)]
    assert not cycles, cycles


def _only_package_reexports(component: list[str]) -> bool:
    packages = [m for m in component if (MODULES[m].name == "__init__.py")]
    return len(packages) == 1 and all(m.startswith(packages[0] + ".") or m == packages[0] for m in component)


def test_the_checks_would_catch_violations(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import trio\nfrom p2pd.net.node import Node\nimport os.path\n")
    assert imports_of(sample, set(MODULES)) >= {"trio", "p2pd.net.node", "os"}
    assert room_of("p2pd.net.node") == "net" and "roles" not in ROOM_MAY_IMPORT["net"]
    assert "sim" not in ROOM_MAY_IMPORT["daemon"] and "sim" not in ROOM_MAY_IMPORT["components"]


def test_daemon_and_benchmarks_use_only_the_packages_public_names() -> None:
    """STYLE.md rule 7: outside a package, import what its __init__ exports.

    (Tests may reach into a package's modules to test them.)
    """
    offenders = []
    outside = ("protocol", "store", "meter_drivers", "paho_trio")
    for path in sorted([*(ROOT / "p2pd").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top, _, rest = node.module.partition(".")
                if top in outside and rest:
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top, _, rest = alias.name.partition(".")
                    if top in outside and rest:
                        offenders.append(f"{path.relative_to(ROOT)}: import {alias.name}")
    assert not offenders, offenders
