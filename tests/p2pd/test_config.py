"""Configuration loading: defaults, and a message naming the key for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pd.config import Config, Section, Table, parse_config
from p2pd.config import load_config as load_with_sections
from p2pd.errors import ConfigError
from p2pd.market.settlement import DEFAULT_EXPORT_PRICE, DEFAULT_IMPORT_PRICE, PRICE_SCALE

ISSUER = "ab" * 32
MINIMAL = f"""
[node]
state_dir = "state"

[community]
id = "mystreet"
issuers = ["{ISSUER}"]
"""


def load_config(path: Path) -> Config:
    """The core sections only: component sections are unknown here (tests/p2pd/components)."""
    return load_with_sections(path, sections=())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p2pd.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_sensible_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.node.state_dir == tmp_path / "state"  # relative to the file
    assert cfg.node.keys_dir == tmp_path / "state" / "keys"
    assert cfg.node.credential == tmp_path / "state" / "keys" / "credential"
    assert cfg.node.log_level == "info"
    assert cfg.community.issuers == (bytes.fromhex(ISSUER),)
    assert cfg.community.slot_seconds == 900
    assert (cfg.p2p.host, cfg.p2p.port, cfg.p2p.peers) == ("0.0.0.0", 7400, ())
    assert cfg.store.url == f"sqlite:///{tmp_path / 'state' / 'p2pd.db'}"
    assert cfg.meter.driver == "simulated" and dict(cfg.meter.options) == {}
    assert (cfg.tariffs.currency, cfg.tariffs.import_price, cfg.tariffs.export_price) == ("GBP", 139_000, 47_000)
    assert DEFAULT_IMPORT_PRICE / PRICE_SCALE == 0.139 and DEFAULT_EXPORT_PRICE / PRICE_SCALE == 0.047


def test_runtime_dir_follows_systemd_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/p2pd")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/p2pd")
    cfg = load_config(write(tmp_path, MINIMAL.replace('state_dir = "state"', "")))
    assert cfg.node.state_dir == Path("/var/lib/p2pd")
    assert cfg.node.control_socket == Path("/run/p2pd/control.sock")


def test_full_example_file_is_valid() -> None:
    example = Path(__file__).parents[2] / "examples" / "p2pd.toml"
    if not example.exists():
        pytest.skip("no example yet")
    from p2pd.components import SECTIONS

    cfg = load_with_sections(example, sections=SECTIONS)
    assert cfg.community.id


BAD = [
    ('[p2p]\nport = "abc"', '[p2p].port: expected an integer 0..65535, got "abc"'),
    ("[p2p]\nport = 70000", "[p2p].port: expected an integer 0..65535, got 70000"),
    ("[p2p]\nport = true", "[p2p].port: expected an integer"),
    ('[p2p]\npeers = ["nohost"]', '[p2p].peers[0]: expected "host:port"'),
    ('[p2p]\npeers = "a:1"', "[p2p].peers: expected a list of strings"),
    ("[p2p]\nmax_connections = 0", "[p2p].max_connections: expected an integer 1..100000"),
    ("[p2p]\nlisten = 1", "[p2p].listen: unknown key"),
    ('[node]\nlog_level = "loud"', '[node].log_level: expected one of debug, info, warning, error, got "loud"'),
    ("[node]\nstate_dir = 5", "[node].state_dir: expected a string, got 5"),
    ("[community]\nslot_seconds = 7", "[community].slot_seconds: expected an integer 60..86400, got 7"),
    ("[community]\nslot_seconds = 7000", "[community].slot_seconds: must divide a day"),
    ('[community]\nissuers = ["zz"]', '[community].issuers[0]: expected 64 hex digits'),
    ("[community]\nissuers = []", "[community].issuers: list at least one"),
    ('[community]\nid = "bad id"', "[community].id: expected letters"),
    ('[tariffs]\ncurrency = "pounds"', "[tariffs].currency: expected a non-empty string of at most 3"),
    ("[tariffs]\nimport_price = 0.139", "[tariffs].import_price: expected an integer 0..100000000, got 0.139"),
    ('[meter]\ndriver = "nosuch"', "[meter].driver: unknown driver"),
    ('[meter]\noptions = { kind = "wind" }', "[meter].options.kind:"),
    ("[meter]\ninterval = 0", "[meter].interval: expected a number in 0.1..3600.0, got 0"),
    ("[store]\nurl = 1", "[store].url: expected a string"),
    ("[nonsense]\nx = 1", "[nonsense]: unknown section"),
    ("toplevel = 1", "toplevel: unknown top-level key"),
    ("[trading]\n[trading.x]\n", "[trading]: unknown section"),  # unless the caller passes its Section
]


@pytest.mark.parametrize("extra, message", BAD)
def test_each_mistake_names_its_key(tmp_path: Path, extra: str, message: str | None) -> None:
    text = MINIMAL
    # Replace a key of the minimal file rather than duplicating it (TOML forbids that).
    section = extra.split("]", 1)[0] + "]" if extra.startswith("[") else None
    if section in ("[community]", "[node]"):
        body = extra.split("\n", 1)[1]
        key = body.split("=")[0].strip()
        lines = [ln for ln in text.splitlines() if not ln.startswith(key + " ")]
        text = "\n".join(lines).replace(section, section + "\n" + body)
    elif section is None:
        text = extra + "\n" + text
    else:
        text = text + "\n" + extra + "\n"
    if message is None:
        load_config(write(tmp_path, text))
        return
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(message), str(info.value)


def test_missing_community_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[community\]\.id: is required"):
        parse_config({"community": {}}, sections=())
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[p2p\nport = 1"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_component_sections_are_validated_by_the_sections_passed() -> None:
    def limits(t: Table) -> tuple[int, bool]:
        return t.integer("orders_per_minute", 60, 1, 10_000), t.boolean("strict", False)

    sections = [Section("limits", limits)]
    base = {"community": {"id": "c", "issuers": [ISSUER]}}
    assert parse_config(base, sections=sections).sections["limits"] == (60, False)  # defaults
    cfg = parse_config({**base, "limits": {"orders_per_minute": 5}}, sections=sections)
    assert cfg.sections["limits"] == (5, False) and sections[0].get(cfg) == (5, False)
    with pytest.raises(ConfigError, match=r"^\[limits\]\.orders_per_minute: expected an integer 1\.\.10000"):
        parse_config({**base, "limits": {"orders_per_minute": 0}}, sections=sections)
    with pytest.raises(ConfigError, match=r"^\[limits\]\.bogus: unknown key"):
        parse_config({**base, "limits": {"bogus": 1}}, sections=sections)
    with pytest.raises(ConfigError, match=r"^\[trading\]: unknown section"):
        parse_config({**base, "trading": {}}, sections=sections)

    def picky(t: Table) -> None:
        raise ValueError("floor_price must not exceed ceiling_price")

    with pytest.raises(ConfigError, match=r"^\[trading\]: floor_price must not exceed"):
        parse_config({**base, "trading": {"floor_price": 2}}, sections=[Section("trading", picky)])
    with pytest.raises(ValueError, match="non-core"):
        parse_config(base, sections=[Section("p2p", picky)])
