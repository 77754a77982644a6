"""Target: ``p2pd.config.config_from_bytes`` (``load_config`` after the read) on any bytes.

The components' section validators are registered first, as ``p2pd config
check`` does. Documented outcome: a ``Config`` -- which ``describe`` must
then turn into JSON, as ``config check --json`` prints it -- or a
``ConfigError`` whose message is one short line naming the file. Anything
else is a finding (issue 17: ValueError, RecursionError, RuntimeError,
OverflowError escaped here).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from p2pd.components import SECTIONS as COMPONENT_SECTIONS
from p2pd.config import Config, config_from_bytes, describe
from p2pd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PATH = Path("/etc/p2pd/p2pd.toml")  # never opened: it only names the file in messages
MAX_MESSAGE = 300

def target(data: bytes) -> None:
    try:
        config = config_from_bytes(data, sections=COMPONENT_SECTIONS, base=PATH.parent, path=PATH)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{PATH}: "):
            raise AssertionError("error message does not name the file") from exc
        if len(message) > MAX_MESSAGE or "\n" in message:
            raise AssertionError(f"error message over {MAX_MESSAGE} characters or lines") from exc
        return
    if not isinstance(config, Config):
        raise AssertionError(f"returned a {type(config).__name__}")
    json.dumps(describe(config), indent=2)


ISSUER = "ab" * 32
DAEMON = f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "warning"
[community]
id = "dt"
issuers = ["{ISSUER}"]
[p2p]
host = "127.0.0.1"
port = 0
peers = ["127.0.0.1:7401", "[::1]:7402"]
[store]
url = "memory://"
[meter]
driver = "none"
[settlement]
enabled = false
[trading]
agent = false
"""
SECTIONS = """
[broker]
member = "broker"
sign_timeout = 2.5
[delegation]
representative = "rep"
max_wh_per_slot = 500
[representative]
ask = 90000
[replication]
replicas = 2
[limits]
control_rate = 10.0
ban_max = 3600.0
[revocations]
lists = ["a.rl", "b.rl"]
"""


def _test_config_files() -> list[bytes]:
    """The minimal file and each mistake of tests/p2pd/test_config.py."""
    spec = importlib.util.spec_from_file_location("p2pd_fuzz_test_config", ROOT / "tests" / "p2pd" / "test_config.py")
    if spec is None or spec.loader is None:
        return []
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    minimal: str = module.MINIMAL
    return [minimal.encode()] + [(minimal + "\n" + extra + "\n").encode() for extra, _ in module.BAD]


def seeds() -> list[bytes]:
    found = [(ROOT / "examples" / "p2pd.toml").read_bytes(), DAEMON.encode(), (DAEMON + SECTIONS).encode()]
    found += _test_config_files()
    base = DAEMON.encode()
    found += [  # issue 17 and the findings while fixing it
        base + b"[tariffs]\nimport_price = " + b"9" * 4301 + b"\n",
        base.replace(b"peers = [", b"peers = " + b"[" * 490 + b"]" * 489 + b", ["),
        base.replace(b'"state"', b'"~("'),
        base.replace(b'driver = "none"', b'driver = "simulated"\n[meter.options]\ndaily_kwh = ' + b"9" * 400),
        base + b'[broker]\n"announce" = "h:\xc2\xb2"\n',
        base.replace(b"port = 0", b'announce = "h:\xc2\xb2"\nport = 9223372036854775808'),
        base.replace(b'driver = "none"', b'driver = "none"\ninterval = nan\n[meter.options]\nat = 1979-05-27T07:32:00Z'),
        base.replace(b'"127.0.0.1"', b'"a\\u0000b"', 1),
        base + b"[limits]\ngrace = inf\n",
    ]
    return found
