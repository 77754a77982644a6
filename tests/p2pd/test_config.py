"""Configuration loading: defaults, and a message naming the key for each mistake."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    path = write(tmp_path, text)
    if message is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


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


# --- issue 17: any file content gives a Config or a ConfigError --------------------------------


def bad_file(tmp_path: Path, extra: str, replace: tuple[str, str] | None = None) -> Path:
    text = MINIMAL if replace is None else MINIMAL.replace(*replace)
    return write(tmp_path, text + "\n" + extra + "\n")


def load_error(path: Path) -> str:
    """The message of the ConfigError loading ``path`` raises (any other exception fails)."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert len(message) - len(str(path)) < 200, message
    return message


@pytest.mark.parametrize("extra, replace, expected", [
    # Found by outside testers: each raised something other than ConfigError.
    ("[p2p]\nport = " + "9" * 4301, None, "invalid TOML: a number is too long"),  # ValueError
    # RecursionError; whether tomllib or our check refuses 490 depends on the stack depth.
    ("[p2p]\npeers = " + "[" * 490 + "]" * 490, None, "nested"),
    ("[p2p]\npeers = " + "[" * 1000 + "]" * 1000, None, "invalid TOML: arrays or inline tables nested too "
     "deeply (deeper than 32 at line 10)"),
    ("[p2p]\npeers = " + "[" * 100 + "]" * 100, None, "[p2p].peers: nested deeper than 32"),
    ("", ('state_dir = "state"', 'state_dir = "~("'), '[node].state_dir: cannot expand ~ in "~("'),  # RuntimeError
    ("[meter]\n[meter.options]\ndaily_kwh = " + "9" * 400, None,
     "[meter].options.daily_kwh: integer outside the 64-bit range"),  # OverflowError
    ('[p2p]\nannounce = "h:²"', None, '[p2p].announce: expected "host:port"'),  # ValueError
    # Found while fixing them.
    ("[p2p]\nport = 9223372036854775808", None, "[p2p].port: integer outside the 64-bit range"),
    ('[p2p]\npeers = ["a:٣"]', None, '[p2p].peers[0]: expected "host:port"'),  # Arabic-Indic 3
    ("[meter]\ninterval = nan", None, "[meter].interval: expected a finite number, got NaN"),  # accepted
    ("[meter]\ninterval = inf", None, "[meter].interval: expected a finite number, got Infinity"),
    ("[meter]\n[meter.options]\ndaily_kwh = inf", None, "[meter].options.daily_kwh: expected a finite"),
    ('[meter]\ndriver = "none"\n[meter.options]\nx = nan', None, "[meter].options.x: expected a finite"),
    ('[p2p]\nhost = "a\\u0000b"', None, "[p2p].host: expected a host name"),  # getaddrinfo ValueError
    (f'[p2p]\nhost = "{"a" * 64}.example"', None, "[p2p].host: expected a host name"),  # UnicodeError
    ('[p2p]\npeers = ["a..b:7400"]', None, '[p2p].peers[0]: expected "host:port"'),
    ("", ('state_dir = "state"', 'state_dir = "a\\u0000b"'), "[node].state_dir: a path cannot contain"),
    ('[tariffs]\ncurrency = "ÄÖÜ"', None, "[tariffs].currency: expected a 3-letter"),
])
def test_hostile_values_are_config_errors(
    tmp_path: Path, extra: str, replace: tuple[str, str] | None, expected: str
) -> None:
    message = load_error(bad_file(tmp_path, extra, replace))
    assert expected in message


def test_messages_quote_little_of_the_file(tmp_path: Path) -> None:
    long_key = "k" * 3000
    assert '[p2p]."kkkk' in load_error(bad_file(tmp_path, f'[p2p]\n"{long_key}" = 1'))
    message = load_error(bad_file(tmp_path, "", ('state_dir = "state"', f'log_level = "{"x" * 5000}"')))
    assert message.count("x") <= 60
    assert "unknown key" in load_error(bad_file(tmp_path, '[p2p]\n"a\\nb" = 1'))
    deep = ".".join(f'"{i}{"k" * 50}"' for i in range(30))  # 30 long keys, then a huge integer
    message = load_error(bad_file(tmp_path, f"[meter.options.{deep}]\nx = {10**30}"))
    assert message.endswith('[meter].options..."29' + "k" * 50 + '".x: integer outside the 64-bit range')


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:
        f.truncate(1 << 40)  # sparse: reading it all would need a terabyte
    assert load_error(path).endswith("larger than 1048576 bytes")


def test_a_driver_or_validator_tripping_over_a_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meter_drivers

    def overflow(name: str, options: object) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(meter_drivers, "create_driver", overflow)
    assert "[meter].options: the simulated driver cannot use them (OverflowError" in load_error(
        bad_file(tmp_path, "[meter]\n[meter.options]\nseed = 1"))
    with pytest.raises(ConfigError, match=r"^\[limits\]: division by zero"):
        parse_config({"community": {"id": "c", "issuers": [ISSUER]}, "limits": {}, "meter": {"driver": "none"}},
                     sections=[Section("limits", lambda t: 1 / 0)])


def test_describe_is_json_ready_whatever_the_options_hold(tmp_path: Path) -> None:
    import json

    from p2pd.config import describe

    cfg = load_config(bad_file(tmp_path, '[meter]\ndriver = "none"\n[meter.options]\n'
                                         "since = 1979-05-27T07:32:00Z\nat = 07:32:00\nlist = [1979-05-27]"))
    options = json.loads(json.dumps(describe(cfg)))["meter"]["options"]
    assert options == {"since": "1979-05-27T07:32:00+00:00", "at": "07:32:00", "list": ["1979-05-27"]}


# --- reload keeps the running configuration ------------------------------------------------------


@pytest.fixture
def p2pd_log() -> Iterator[list[str]]:
    """The "p2pd" logger's lines, also after an in-process daemon's
    log.setup() has turned propagation (to pytest's handler) off."""
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    logger, handler = logging.getLogger("p2pd"), Handler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


class _Notifier:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reloading(self) -> None:
        self.calls.append("reloading")

    def ready(self, status: str) -> None:
        self.calls.append("ready")


def _context(path: Path) -> Any:
    from types import SimpleNamespace

    from p2pd.context import DaemonContext

    node = SimpleNamespace(sessions={}, limits=None)
    identity = SimpleNamespace(member_id="alice")
    return DaemonContext(load_config(path), identity, None, None, node, None, None,  # type: ignore[arg-type]
                         _Notifier())  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    MINIMAL.replace('state_dir = "state"', 'state_dir = "~("'),  # RuntimeError before issue 17
    MINIMAL + '\n[p2p]\nannounce = "h:²"\n',  # ValueError
    MINIMAL + "\n[p2p]\nport = " + "9" * 4301 + "\n",  # ValueError
    "[p2p\n",
])
async def test_reload_keeps_the_old_configuration_on_any_bad_file(
    tmp_path: Path, text: str, p2pd_log: list[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    ctx = _context(path)
    old = ctx.config
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: "):
        await ctx.reload()
    assert ctx.config is old
    assert ctx.notifier.calls == ["reloading", "ready"]
    assert [line.split()[0] for line in p2pd_log if "config_reload_failed" in line] == ["WARNING"]


async def test_reload_turns_a_loading_bug_into_a_logged_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, p2pd_log: list[str]
) -> None:
    import p2pd.context

    path = write(tmp_path, MINIMAL)
    ctx = _context(path)
    old = ctx.config

    def buggy(path: Path, **kwargs: Any) -> None:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(p2pd.context, "load_config", buggy)
    with pytest.raises(ConfigError, match=r"cannot be loaded \(ZeroDivisionError\); keeping"):
        await ctx.reload()
    assert ctx.config is old
    (line,) = [line for line in p2pd_log if "config_reload_failed" in line]
    assert "traceback=" in line and "ZeroDivisionError: injected" in line and "\n" not in line


async def test_sighup_survives_a_failing_reload(p2pd_log: list[str]) -> None:
    import signal

    from p2pd.daemon import _handle_signals

    stopped: list[bool] = []

    class Ctx:
        async def reload(self) -> None:
            raise KeyError("a reload hook's bug")

        def stop(self) -> None:
            stopped.append(True)

    async def signals() -> Any:
        yield signal.SIGHUP
        yield signal.SIGHUP
        yield signal.SIGTERM

    await _handle_signals(Ctx(), signals())  # type: ignore[arg-type]
    assert stopped == [True]
    assert sum("config_reload_failed" in line for line in p2pd_log) == 2
