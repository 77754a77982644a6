"""The daemon's TOML configuration: frozen dataclasses, validated once at load.

Every problem raises :class:`~p2pd.errors.ConfigError` whose message names
the key and says what is wrong, e.g. ``[p2p].port: expected an integer
0..65535, got "abc"`` (and :func:`load_config` puts the file name in front).
Unknown sections and keys are errors (a typo must not silently fall back to a
default). docs/configuration.md describes each key.

Invariant (issue 17): whatever the file holds, :func:`load_config` returns a
:class:`Config` or raises :class:`ConfigError`, never another exception. The
file is read only up to :data:`MAX_CONFIG_BYTES`; :func:`parse_config` first
checks the whole document's shape (:data:`MAX_DEPTH`, 64-bit integers), so
the validators below and the extension validators only see bounded values.
Messages quote at most :data:`SHOW_CHARS` characters of what the file says.

Component sections: this module validates the core sections (``[node]``,
``[community]``, ``[p2p]``, ``[store]``, ``[meter]``, ``[tariffs]``). Every
other section belongs to one daemon component (p2pd/components/), which
describes it next to its code with a :class:`Section`: the name and a parser
from a :class:`Table` to a typed value::

    def parse(t: Table) -> ReplicationConfig:
        return ReplicationConfig(enabled=t.boolean("enabled", True),
                                 replicas=t.integer("replicas", 3, 0, 16))

    REPLICATION = Section("replication", parse)

The caller says which sections a file may have, ``load_config(path,
sections=p2pd.components.SECTIONS)``: this module never imports the
components, so what is valid does not depend on what happened to be
imported. A section outside the list is refused as unknown; one the file
leaves out gets the parser's defaults; ``REPLICATION.get(config)`` returns
the value.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from p2pd.config.table import (
    MAX_DEPTH,
    Section,
    Table,
    _cut,
    _key,
    _show,
    check_shape,
)
from p2pd.errors import ConfigError
from p2pd.market.settlement import DEFAULT_EXPORT_PRICE, DEFAULT_IMPORT_PRICE
from protocol import ID_PATTERN, MAX_SLOT, MIN_SLOT

CORE_SECTIONS = ("node", "community", "p2p", "store", "meter", "tariffs")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Prices use p2pd/market/settlement.py's scale (integer money units per kWh,
# PRICE_SCALE units to one currency unit) and its default tariffs. Bounds that
# the wire also checks (prices, slot lengths, ids) are the protocol's own
# constants, imported above: a file that passes here makes orders the wire
# accepts. tests/p2pd/test_bounds.py refuses a second definition.
DAY = 86400
DEFAULT_PORT = 7400
MAX_CONFIG_BYTES = 1 << 20
_PORT = re.compile(r"[0-9]{1,5}")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class NodeConfig:
    state_dir: Path
    runtime_dir: Path
    keys_dir: Path
    credential: Path
    log_level: str = "info"

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"


@dataclass(frozen=True)
class CommunityConfig:
    id: str
    issuers: tuple[bytes, ...]
    slot_seconds: int = 900
    gate_closure_seconds: int = 300


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class P2PConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    peers: tuple[PeerAddress, ...] = ()
    max_connections: int = 128
    max_handshakes: int = 16
    announce: PeerAddress | None = None
    """Address to announce to the community; None: derive from host/port if routable."""
    exchange: bool = True
    """Relay announcements and dial members learnt from them."""


@dataclass(frozen=True)
class StoreConfig:
    url: str


@dataclass(frozen=True)
class MeterConfig:
    driver: str | None = "simulated"
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    interval: float = 10.0


@dataclass(frozen=True)
class TariffsConfig:
    currency: str = "GBP"
    import_price: int = DEFAULT_IMPORT_PRICE
    export_price: int = DEFAULT_EXPORT_PRICE


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    community: CommunityConfig
    p2p: P2PConfig
    store: StoreConfig
    meter: MeterConfig
    tariffs: TariffsConfig
    sections: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """Validated component sections (``trading``, ``limits``, ...) by name; see :meth:`Section.get`."""
    path: Path | None = None


def parse_peer(text: str, where: str) -> PeerAddress:
    """``host:port`` or ``[v6]:port`` -> PeerAddress; raises ConfigError naming ``where``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # A regex, not isdigit(): "²".isdigit() is true but int("²") raises.
    if not sep or not host or not _PORT.fullmatch(port) or not 0 < int(port) <= 65535 or not _host_ok(host):
        raise ConfigError(f"{where}: expected \"host:port\" with a port 1..65535, got {_show(text)}")
    return PeerAddress(host, int(port))


def _host_ok(host: str) -> bool:
    """No spaces or control characters, and labels getaddrinfo can encode.

    Both would only fail later, when the daemon listens or dials: a NUL with
    ValueError, a label over 63 characters or an empty one with UnicodeError
    from the "idna" codec that socket and trio use.
    """
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return all(c.isprintable() and not c.isspace() for c in host)


def _hex_key(text: str, where: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    if len(data) != 32:
        raise ConfigError(f"{where}: expected 64 hex digits (an issuer public key), got {_show(text)}")
    return data


def _env_dir(name: str, fallback: str) -> Path:
    # systemd passes StateDirectory=/RuntimeDirectory= as these variables
    # (colon-separated if several); use the first.
    value = os.environ.get(name, "")
    return Path(value.split(":")[0]) if value else Path(fallback)


def _node(t: Table, base: Path) -> NodeConfig:
    state = t.path("state_dir", _env_dir("STATE_DIRECTORY", "/var/lib/p2pd"), base)
    runtime = t.path("runtime_dir", _env_dir("RUNTIME_DIRECTORY", "/run/p2pd"), base)
    keys = t.path("keys_dir", state / "keys", base)
    cred = t.path("credential", keys / "credential", base)
    level = t.choice("log_level", LOG_LEVELS, "info")
    t.finish()
    return NodeConfig(state, runtime, keys, cred, level)


def _community(t: Table) -> CommunityConfig:
    cid = t.string("id", required=True, max_len=64)
    if not re.fullmatch(ID_PATTERN, cid):
        raise t.error("id", f"expected letters, digits and . _ : - (at most 64), got {_show(cid)}")
    issuers = t.strings("issuers", max_items=64)
    if not issuers:
        raise t.error("issuers", "list at least one trusted issuer public key (hex)")
    keys = tuple(_hex_key(h, f"[community].issuers[{i}]") for i, h in enumerate(issuers))
    slot = t.integer("slot_seconds", 900, MIN_SLOT, MAX_SLOT)
    if DAY % slot:
        raise t.error("slot_seconds", f"must divide a day ({DAY}) evenly, got {slot}")
    gate = t.integer("gate_closure_seconds", 300, 0, DAY)
    t.finish()
    return CommunityConfig(cid, keys, slot, gate)


def _p2p(t: Table) -> P2PConfig:
    host = t.string("host", "0.0.0.0", max_len=253)
    if not _host_ok(host):
        raise t.error("host", f"expected a host name or address, got {_show(host)}")
    port = t.integer("port", DEFAULT_PORT, 0, 65535)
    peers = tuple(parse_peer(p, f"[p2p].peers[{i}]") for i, p in enumerate(t.strings("peers", max_items=256)))
    max_conn = t.integer("max_connections", 128, 1, 100_000)
    max_hs = t.integer("max_handshakes", 16, 1, 100_000)
    announce_text = t.string("announce", None, max_len=300)
    announce = parse_peer(announce_text, "[p2p].announce") if announce_text else None
    exchange = t.boolean("exchange", True)
    t.finish()
    return P2PConfig(host, port, peers, max_conn, max_hs, announce, exchange)


def _store(t: Table, node: NodeConfig) -> StoreConfig:
    url = t.string("url", f"sqlite:///{node.state_dir / 'p2pd.db'}")
    t.finish()
    return StoreConfig(url)


def _meter(t: Table) -> MeterConfig:
    driver = t.string("driver", "simulated", max_len=64)
    if driver == "none":
        driver = None
    options = t.table("options")
    interval = t.number("interval", 10.0, 0.1, 3600.0)
    t.finish()
    for name, value in options.items():
        # Driver options are numbers of seconds, kWh, degrees: none means nan or inf.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"[meter].options.{_key(name)}: expected a finite number, got {_show(value)}")
    if driver is not None:
        _check_meter(driver, options)
    return MeterConfig(driver, MappingProxyType(dict(options)), interval)


def _check_meter(driver: str, options: dict[str, Any]) -> None:
    """Let the driver check its options; any failure becomes a ConfigError."""
    try:
        import meter_drivers
    except ImportError:  # pragma: no cover - the package ships with p2pd
        return
    try:
        meter_drivers.create_driver(driver, options)
    except meter_drivers.DriverConfigError as exc:
        key = "driver" if exc.key == "driver" else f"options.{_key(exc.key)}"
        raise ConfigError(f"[meter].{key}: {_cut(str(exc).split(': ', 1)[-1])}") from exc
    except (ValueError, TypeError, ArithmeticError) as exc:
        # A driver that trips over a value it should have refused (issue 17:
        # float() of a 400-digit integer): still the file's fault, named as such.
        raise ConfigError(f"[meter].options: the {_key(driver)} driver cannot use them "
                          f"({type(exc).__name__}: {_cut(str(exc))})") from exc


def _tariffs(t: Table) -> TariffsConfig:
    currency = t.string("currency", "GBP", max_len=3)
    if not _CURRENCY.fullmatch(currency):
        raise t.error("currency", f"expected a 3-letter ISO 4217 code like \"GBP\", got {_show(currency)}")
    imp = t.price("import_price", DEFAULT_IMPORT_PRICE)
    exp = t.price("export_price", DEFAULT_EXPORT_PRICE)
    t.finish()
    return TariffsConfig(currency, imp, exp)


def parse_config(data: dict[str, Any], *, sections: Sequence[Section[Any]], base: Path = Path("."),
                 path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document with the core and the given ``sections``.

    Raises :class:`ConfigError` naming the key (not the file: :func:`load_config`
    adds that), e.g. for a section neither core nor in ``sections``; a
    section parser's ``ValueError``, ``TypeError`` or ``ArithmeticError`` is
    reported as one too. ``ValueError`` if ``sections`` repeats or shadows a
    name (the caller's bug).
    """
    check_shape(data)
    by_name = {s.name: s for s in sections}
    if len(by_name) != len(sections) or set(by_name) & set(CORE_SECTIONS):
        raise ValueError(f"sections must have distinct, non-core names: {[s.name for s in sections]}")
    top = Table("", data)
    parts: dict[str, dict[str, Any]] = {}
    for name in CORE_SECTIONS:
        parts[name] = top._get(name, {}, name == "community")
    extra = {name: top._get(name, {}, False) for name in sorted(by_name)}
    for key in top._data:
        raise ConfigError(f"[{_key(key)}]: unknown section" if isinstance(top._data[key], dict)
                          else f"{_key(key)}: unknown top-level key (keys belong in a [section])")
    node = _node(Table("node", parts["node"]), base)
    community = _community(Table("community", parts["community"]))
    p2p = _p2p(Table("p2p", parts["p2p"]))
    store = _store(Table("store", parts["store"]), node)
    meter = _meter(Table("meter", parts["meter"]))
    tariffs = _tariffs(Table("tariffs", parts["tariffs"]))
    # A section the file leaves out is validated as {}: its parser's defaults.
    values: dict[str, object] = {}
    for name, raw in extra.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}]: expected a table, got {_show(raw)}")
        values[name] = by_name[name].load(raw)
    return Config(node, community, p2p, store, meter, tariffs, MappingProxyType(values), path)


def load_config(path: Path, *, sections: Sequence[Section[Any]]) -> Config:
    """Read and validate the TOML file at ``path``.

    ``sections`` are the component sections the file may have besides the
    core ones (the daemon's: :data:`p2pd.components.SECTIONS`). Relative
    paths in the file are taken relative to the file's directory.
    Raises :class:`ConfigError`, whose message starts with ``path``, for any
    content, for a file over :data:`MAX_CONFIG_BYTES` (checked before it is
    read: at most one byte more is) and for a file that cannot be read.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
            # Not a regular file (a pipe, /dev/zero) or one that grows: read one byte past the limit.
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        base = path.resolve().parent
    except (OSError, RuntimeError):  # a symlink loop: the file was read, so keep going
        base = path.absolute().parent
    return config_from_bytes(raw, sections=sections, base=base, path=path)


def config_from_bytes(raw: bytes, *, sections: Sequence[Section[Any]], base: Path = Path("."),
                      path: Path | None = None) -> Config:
    """Parse and validate the bytes of a TOML file (``load_config`` without the reading).

    Raises :class:`ConfigError` for anything wrong with them; its message
    starts with ``path`` when one is given.
    """
    where = f"{path}: " if path is not None else ""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}not UTF-8 text (byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its text is a fixed phrase plus line and column
        raise ConfigError(f"{where}invalid TOML: {_cut(str(exc))}") from exc
    except ValueError as exc:  # int() of over 4,300 digits (sys.get_int_max_str_digits)
        raise ConfigError(f"{where}invalid TOML: a number is too long") from exc
    except RecursionError as exc:  # tomllib recurses per nested array or inline table
        line = _deep_line(text)
        raise ConfigError(f"{where}invalid TOML: arrays or inline tables nested too deeply "
                          f"(deeper than {MAX_DEPTH} at line {line})") from exc
    try:
        return parse_config(data, sections=sections, base=base, path=path)
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"{where}{exc}") from exc


def _deep_line(text: str) -> int:
    """The line where ``[``/``{`` first nest deeper than MAX_DEPTH, for a message.

    Skips strings and comments well enough for a hint; only called once
    tomllib has failed, so it can never reject a valid file.
    """
    depth, line, i, quote = 0, 1, 0, ""
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
            quote = quote if len(quote) == 3 else ""
        elif quote:
            if c == "\\" and quote[0] == '"':
                i += 1
            elif text.startswith(quote, i):
                i, quote = i + len(quote) - 1, ""
        elif c == "#":
            end = text.find("\n", i)
            i = (end if end >= 0 else len(text)) - 1
        elif c in "\"'":
            quote = text[i : i + 3] if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif c in "]}":
            depth -= 1
        i += 1
    return line


def _plain(value: Any) -> Any:
    """``value`` with TOML dates and times as ISO 8601 strings, so json.dumps takes it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    return value


def describe(config: Config) -> dict[str, Any]:
    """A JSON-ready summary of ``config`` (for ``p2pd config check --json``).

    Never raises for a Config that :func:`parse_config` returned.
    """
    return {
        "node": {k: str(v) for k, v in vars(config.node).items()},
        "community": {"id": config.community.id,
                      "issuers": [k.hex() for k in config.community.issuers],
                      "slot_seconds": config.community.slot_seconds,
                      "gate_closure_seconds": config.community.gate_closure_seconds},
        "p2p": {"host": config.p2p.host, "port": config.p2p.port,
                "peers": [str(p) for p in config.p2p.peers],
                "max_connections": config.p2p.max_connections,
                "max_handshakes": config.p2p.max_handshakes,
                "announce": str(config.p2p.announce) if config.p2p.announce else None,
                "exchange": config.p2p.exchange},
        "store": {"url": config.store.url},
        "meter": {"driver": config.meter.driver, "options": _plain(config.meter.options),
                  "interval": config.meter.interval},
        "tariffs": vars(config.tariffs).copy(),
        "sections": sorted(config.sections),
    }
