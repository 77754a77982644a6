"""Every bound the wire checks is defined once, in protocol/, and used by p2pd's validators.

``p2pd config check`` must refuse exactly what the wire refuses: a price the
config accepts but every order then carries past ``protocol.MAX_PRICE`` would
make the node's every order fail. So the config validators, the control
methods' parameters and settlement import the protocol's constants, and the
AST test below fails if a module of p2pd/ defines one of them again.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from p2pd.cli.main import EXIT_CONFIG, main
from p2pd.net.identity import write_credential, write_node_keys
from protocol import (
    MAX_HOPS,
    MAX_PRICE,
    MAX_SLOT,
    MAX_TIME,
    MAX_WH,
    MIN_SLOT,
    Credential,
    SigningKey,
)

ROOT = Path(__file__).resolve().parents[2]
ISSUER_KEY = SigningKey.generate()
ISSUER = ISSUER_KEY.public.hex()

# Names only their owner may assign: the wire's bounds belong to protocol/,
# the money scale and default tariffs to settlement.
WIRE_BOUNDS = ("MAX_PRICE", "MAX_WH", "MIN_SLOT", "MAX_SLOT", "MAX_HOPS", "MAX_TIME", "ID_PATTERN")
OWNERS = {
    **{name: ("protocol/trading.py",) for name in WIRE_BOUNDS},
    "ID_PATTERN": ("protocol/credentials.py",),
    "PRICE_SCALE": ("p2pd/market/settlement.py",),
    "DEFAULT_IMPORT_PRICE": ("p2pd/market/settlement.py",),
    "DEFAULT_EXPORT_PRICE": ("p2pd/market/settlement.py",),
}
# The values themselves, written as literals, are a redefinition by another name.
BOUND_VALUES = {MAX_WH: "MAX_WH", MAX_PRICE: "MAX_PRICE", MAX_TIME: "MAX_TIME"}


def _assigned(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def _literal(node: ast.AST) -> object:
    """The value of a constant or of a constant ``a ** b`` / ``a * b``; else None."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if type(left) is int and type(right) is int:
            if isinstance(node.op, ast.Mult):
                return left * right
            if 0 <= right < 64:
                return left ** right
    return None


def _sources() -> list[Path]:
    return sorted([*(ROOT / "p2pd").rglob("*.py"), *(ROOT / "protocol").rglob("*.py")])


def test_bounds_are_assigned_only_by_their_owner() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for name in sorted(_assigned(tree) & set(OWNERS)):
            if rel not in OWNERS[name]:
                offenders.append(f"{rel} assigns {name}; import it from its owner {OWNERS[name][0]}")
    assert not offenders, offenders


def test_no_bound_is_written_out_as_a_number() -> None:
    offenders = []
    for path in (ROOT / "p2pd").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            value = _literal(node)
            if type(value) is int and value in BOUND_VALUES:
                offenders.append(f"{rel}:{getattr(node, 'lineno', '?')}: {value} is protocol's "
                                 f"{BOUND_VALUES[value]}; import it")
    assert not offenders, offenders


def test_the_checks_would_catch_a_redefinition(tmp_path: Path) -> None:
    tree = ast.parse("MAX_PRICE = 10**9\nclass C:\n    MAX_WH: int = 5\nx = 10**8\n")
    assert _assigned(tree) >= {"MAX_PRICE", "MAX_WH"}
    assert [_literal(n) for n in ast.walk(tree) if _literal(n) == MAX_PRICE] == [MAX_PRICE]


# --- p2pd config check refuses what the wire refuses ------------------------------------


def _toml(sections: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        for key, value in body.items():
            text = f'"{value}"' if isinstance(value, str) else repr(value).replace("'", '"')
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


# Keys the wire bound of one key must not be refused for (config check also
# checks prices against the tariffs, issue 13): tariffs as wide as the wire
# allows, and an ask that may go as high as the floor.
COMPANIONS: dict[tuple[str, str], dict[str, int]] = {("trading", "sell_floor"): {"sell_price": MAX_PRICE}}


def _config(tmp_path: Path, section: str, key: str, value: int) -> Path:
    """A node's configuration with ``[section] key = value``, its keys and credential in place
    (``config check`` makes every check ``run`` makes)."""
    keys_dir = tmp_path / "state" / "keys"
    if not keys_dir.exists():
        keys = write_node_keys(keys_dir)
        write_credential(keys_dir / "credential", Credential.issue(
            ISSUER_KEY, community="mystreet", member_id="alice", role="prosumer", metering_point="EAN1",
            sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=0, valid_until=MAX_TIME))
    sections: dict[str, dict[str, object]] = {
        "node": {"state_dir": "state"},
        "community": {"id": "mystreet", "issuers": [ISSUER]},
        "meter": {"driver": "none"},
        "store": {"url": "memory://"},
        "tariffs": {"import_price": MAX_PRICE, "export_price": 1},
    }
    sections.setdefault(section, {}).update(COMPANIONS.get((section, key), {}))
    sections[section][key] = value
    path = tmp_path / "p2pd.toml"
    path.write_text(_toml(sections))
    return path


def test_config_check_refuses_a_price_the_wire_refuses(tmp_path: Path) -> None:
    # As an operator runs it: a separate process, the exit status and stderr.
    def check(value: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2pd", "config", "check",
             str(_config(tmp_path, "trading", "sell_price", value))],
            cwd=ROOT, capture_output=True, text=True, timeout=60)

    refused = check(MAX_PRICE + 1)
    assert refused.returncode != 0
    assert "[trading].sell_price" in refused.stderr and str(MAX_PRICE) in refused.stderr, refused.stderr
    accepted = check(MAX_PRICE)
    assert accepted.returncode == 0, accepted.stderr


# (section, key, the largest value the wire carries) for each key that ends up
# in a wire object or bounds one: prices, energy, hops, slot lengths.
UPPER = [
    ("tariffs", "import_price", MAX_PRICE),
    ("tariffs", "export_price", MAX_PRICE),
    ("trading", "sell_price", MAX_PRICE),
    ("trading", "sell_floor", MAX_PRICE),
    ("trading", "buy_ceiling", MAX_PRICE),
    ("trading", "bid_price", MAX_PRICE),
    ("trading", "min_wh", MAX_WH),
    ("trading", "gossip_hops", MAX_HOPS),
    ("representative", "ask", MAX_PRICE),
    ("delegation", "min_sell_price", MAX_PRICE),
    ("delegation", "max_buy_price", MAX_PRICE),
    ("delegation", "max_wh_per_slot", MAX_WH),
    ("community", "slot_seconds", MAX_SLOT),
]


@pytest.mark.parametrize("section, key, bound", UPPER)
def test_config_check_takes_the_wire_bound_and_refuses_past_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, bound: int) -> None:
    assert main(["config", "check", str(_config(tmp_path, section, key, bound))]) == 0
    capsys.readouterr()
    assert main(["config", "check", str(_config(tmp_path, section, key, bound + 1))]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"[{section}].{key}: expected an integer" in err and f"..{bound}," in err, err


def test_config_check_refuses_a_slot_shorter_than_the_wire_allows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(_config(tmp_path, "community", "slot_seconds", MIN_SLOT))]) == 0
    capsys.readouterr()
    assert main(["config", "check", str(_config(tmp_path, "community", "slot_seconds", MIN_SLOT - 1))]) == EXIT_CONFIG
    assert f"[community].slot_seconds: expected an integer {MIN_SLOT}..{MAX_SLOT}" in capsys.readouterr().err
