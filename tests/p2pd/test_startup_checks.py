"""``p2pd config check`` refuses what ``p2pd run`` refuses, and neither prints a traceback
(issue 13, points 8 and 9).

Each case is a node's home with one mistake. Both commands run as
subprocesses, as an operator or systemd runs them; each must exit with the
documented status (78 = EX_CONFIG: fix the file; 69 = EX_UNAVAILABLE: may
pass; 0) and print one line, ``p2pd: error: FILE: [section].key: ...``. The
cases about permissions run without the capabilities that let root write
anywhere (``setpriv`` drops CAP_DAC_OVERRIDE and friends) when the tests run
as root; file modes apply to any other user anyway.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from p2pd_test_helpers import PostgresServer

from p2pd.cli.main import EXIT_CONFIG, EXIT_UNAVAILABLE
from p2pd.net.identity import write_credential, write_node_keys
from protocol import Credential, RevocationList, SigningKey, issue_revocation

pytestmark = pytest.mark.slow
ISSUER = SigningKey.generate()
OTHER_ISSUER = SigningKey.generate()
Config = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Path, Config], None]
    """Make the mistake: change the files under the home or the configuration."""
    message: str
    """What the error line says after ``p2pd: error: FILE: ``."""
    check: int = EXIT_CONFIG
    run: int = EXIT_CONFIG
    unprivileged: bool = False
    """Needs a user that file modes apply to (root bypasses them)."""


def _set(section: str, **values: Any) -> Callable[[Path, Config], None]:
    def prepare(home: Path, cfg: Config) -> None:
        cfg.setdefault(section, {}).update(values)
    return prepare


def _foreign_keys(home: Path, cfg: Config) -> None:
    write_node_keys(home / "other")  # keys, but the credential was issued for state/keys'
    shutil.copy(home / "state" / "keys" / "credential", home / "other" / "credential")
    cfg["node"]["keys_dir"] = "other"


def _readable_key(home: Path, cfg: Config) -> None:
    (home / "state" / "keys" / "signing.key").chmod(0o640)


def _read_only(rel: str) -> Callable[[Path, Config], None]:
    def prepare(home: Path, cfg: Config) -> None:
        d = home / rel
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o555)
        if rel == "db":
            cfg["store"]["url"] = f"sqlite:///{d / 'p2pd.db'}"
    return prepare


def _revocation_from_stranger(home: Path, cfg: Config) -> None:
    rl: RevocationList = issue_revocation(OTHER_ISSUER, ["mallory"], 1, time.time())
    (home / "list.rl").write_bytes(rl.encode())
    cfg["revocations"] = {"lists": ["list.rl"]}


def _no_driver(home: Path, cfg: Config) -> None:
    # A psycopg that cannot be imported, ahead of the installed one (see _env).
    (home / "blocked" / "psycopg").mkdir(parents=True)
    (home / "blocked" / "psycopg" / "__init__.py").write_text('raise ImportError("psycopg hidden by a test")\n')
    cfg["store"]["url"] = "postgresql://p2pd@127.0.0.1:1/p2pd"


CASES = [
    # Point 8: run refused these, config check said ok.
    Case("missing keys", _set("node", keys_dir="nokeys"),
         "[node].keys_dir: {home}/nokeys/signing.key does not exist"),
    Case("foreign keys", _foreign_keys,
         "[node].credential: {home}/other/credential was issued for other keys than those in {home}/other"),
    Case("key readable by group", _readable_key,
         "[node].keys_dir: {home}/state/keys/signing.key is readable by others; run: chmod 600"),
    Case("untrusted issuer", _set("community", issuers=[OTHER_ISSUER.public.hex()]),
         "[node].credential: {home}/state/keys/credential is not acceptable: credential issuer is not trusted"),
    Case("other community", _set("community", id="elsewhere"),
         "[node].credential: {home}/state/keys/credential is not acceptable: credential is for community 'c'"),
    Case("missing state dir", _set("node", state_dir="nostate", keys_dir="state/keys"),
         "[node].state_dir: {home}/nostate does not exist"),
    Case("read-only state dir", _read_only("state"), "[node].state_dir: {home}/state is not writable",
         unprivileged=True),
    Case("missing store dir", _set("store", url="sqlite:///{home}/nodir/p2pd.db"),
         "[store].url: sqlite:///{home}/nodir/p2pd.db: directory {home}/nodir of the database does not exist"),
    Case("read-only store dir", _read_only("db"),
         "[store].url: sqlite:///{home}/db/p2pd.db: directory {home}/db of the database is not writable",
         unprivileged=True),
    Case("runtime dir without parent", _set("node", runtime_dir="gone/run"),
         "[node].runtime_dir: {home}/gone/run does not exist, nor does its parent {home}/gone"),
    Case("revocation list from a stranger", _revocation_from_stranger,
         "[revocations].lists[0]: list.rl is signed by " + OTHER_ISSUER.public.hex()),
    # Point 9: tracebacks, silence, or a restart every 5 s.
    Case("read-only runtime dir", _read_only("run"), "[node].runtime_dir: {home}/run is not writable",
         unprivileged=True),
    Case("missing revocation list", _set("revocations", lists=["nope.rl"]),
         "[revocations].lists[0]: cannot read {home}/nope.rl: No such file or directory"),
    Case("floor below export, agent on", _set("trading", agent=True, sell_floor=1000),
         "[trading].sell_floor: 1000 is below [tariffs].export_price 47000"),
    Case("ceiling above import, agent off", _set("trading", agent=False, buy_ceiling=200_000),
         "[trading].buy_ceiling: 200000 is above [tariffs].import_price 139000"),
    Case("interval nan", _set("meter", driver="simulated", interval=float("nan")),
         "[meter].interval: expected a finite number, got NaN"),
    Case("limits nan", _set("limits", node_capacity=float("nan")),
         "[limits].node_capacity: expected a finite number, got NaN"),
    Case("unknown store scheme", _set("store", url="mysql://p2pd@localhost/p2pd"),
         "[store].url: mysql://p2pd@localhost/p2pd: unsupported database 'mysql'"),
    Case("postgresql without its driver", _no_driver,
         "[store].url: postgresql://p2pd@127.0.0.1:1/p2pd: the postgresql driver is not installed: "
         "pip install 'p2pd[postgres]'"),
    Case("postgresql server down", _set("store", url="postgresql://p2pd:secret@127.0.0.1:1/p2pd"),
         "[store].url: postgresql://p2pd:***@127.0.0.1:1/p2pd: cannot open the store:",
         check=EXIT_UNAVAILABLE, run=EXIT_UNAVAILABLE),
    Case("port in use", lambda home, cfg: None,  # the fixture holds the port
         "[p2p].port: cannot listen on 127.0.0.1:{port}: address already in use", check=0,
         run=EXIT_UNAVAILABLE),
]


def _toml(cfg: Config) -> str:
    lines = []
    for name, body in cfg.items():
        lines.append(f"[{name}]")
        for key, value in body.items():
            lines.append(f"{key} = {'nan' if value != value else json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _home(base: Path, case: Case, port: int) -> Path:
    home = base / case.id.replace(" ", "-").replace(",", "")
    keys = write_node_keys(home / "state" / "keys")
    now = int(time.time())
    write_credential(home / "state" / "keys" / "credential", Credential.issue(
        ISSUER, community="c", member_id="alice", role="prosumer", metering_point="EAN1",
        sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=now - 3600, valid_until=now + 86400))
    cfg: Config = {
        "node": {"state_dir": "state", "runtime_dir": "run", "log_level": "warning"},
        "community": {"id": "c", "issuers": [ISSUER.public.hex()]},
        "p2p": {"host": "127.0.0.1", "port": port},
        "store": {"url": "memory://"},
        "meter": {"driver": "none"},
    }
    case.prepare(home, cfg)
    cfg["store"]["url"] = cfg["store"]["url"].replace("{home}", str(home))
    (home / "p2pd.toml").write_text(_toml(cfg))
    return home


# Root without the capabilities that bypass file modes (its interpreter may sit
# in /root, so becoming another user is not an option).
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def _run(args: list[str], home: Path, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if (home / "blocked").exists():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(home / "blocked"), env.get("PYTHONPATH")]))
    prefix = UNPRIVILEGED if unprivileged and os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-m", "p2pd", *args], cwd=home, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, tuple[Path, int, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]]]:
    """Every case's home, the held port, and what ``config check`` and ``run`` did (run concurrently)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot test file modes")
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="p2pds", dir="/tmp") as tmp, held:
        base = Path(tmp)
        homes = {case.id: _home(base, case, port) for case in CASES}
        jobs = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            for case in CASES:
                for cmd in (["config", "check", "p2pd.toml"], ["run", "--config", "p2pd.toml"]):
                    jobs[case.id, cmd[0]] = pool.submit(_run, cmd, homes[case.id], case.unprivileged)
            out = {case.id: (homes[case.id], port, jobs[case.id, "config"].result(), jobs[case.id, "run"].result())
                   for case in CASES}
        yield out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_and_run_refuse_alike_with_one_key_named_line(
        results: dict[str, tuple[Path, int, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]],
        case: Case) -> None:
    home, port, check, run = results[case.id]
    message = case.message.format(home=home, port=port)
    for name, proc, status in (("config check", check, case.check), ("run", run, case.run)):
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("level=")]
        if status == 0:
            assert proc.returncode == 0 and lines == [] and ": ok (" in proc.stdout, (name, proc.stderr)
            continue
        assert proc.returncode == status, (name, proc.returncode, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"p2pd: error: p2pd.toml: {message}"), (name, lines, message)
        assert "secret" not in proc.stderr


def test_run_makes_a_missing_runtime_dir_but_not_its_parents(tmp_path: Path) -> None:
    from p2pd.config import load_config
    from p2pd.daemon import _make_runtime_dir, check_startup

    case = Case("runtime", _set("node", runtime_dir="new"), "")
    home = _home(tmp_path, case, 0)
    config = load_config(home / "p2pd.toml", sections=())
    check_startup(config, components=[])
    assert not (home / "new").exists()  # the check changes nothing
    old = os.umask(0o077)  # as systemd's UMask=0077 would have it
    try:
        _make_runtime_dir(config.node.runtime_dir)
    finally:
        os.umask(old)
    assert (home / "new").stat().st_mode & 0o777 == 0o750


def test_the_unit_does_not_restart_on_a_configuration_error() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "p2pd.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Restart"] == "on-failure"
    assert set(settings["RestartPreventExitStatus"].split()) == {"2", str(EXIT_CONFIG)}


def test_the_daemon_runs_on_a_postgresql_store(postgres: PostgresServer) -> None:
    """The documented PostgreSQL store works end to end: check, run, store a reading, stop."""
    import signal

    from store import CURRENT_VERSION, open_repository

    url = postgres.new_database()
    case = Case("pg", _set("store", url=url), "")
    home = _home(Path(tempfile.mkdtemp(prefix="p2pdp", dir="/tmp")), case, 0)
    text = (home / "p2pd.toml").read_text().replace('driver = "none"', 'driver = "simulated"\ninterval = 0.2')
    (home / "p2pd.toml").write_text(text)
    check = _run(["config", "check", "p2pd.toml"], home, False)
    assert check.returncode == 0 and ": ok (" in check.stdout, check.stderr
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(home / "notify"))
    notify.settimeout(30)
    proc = subprocess.Popen([sys.executable, "-m", "p2pd", "run", "--config", "p2pd.toml"], cwd=home,
                            env={**os.environ, "NOTIFY_SOCKET": str(home / "notify")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # bounded: READY=1 comes after a few status datagrams
            if b"READY=1" in notify.recv(4096):
                break
        ctl = socket.socket(socket.AF_UNIX)
        ctl.settimeout(30)
        ctl.connect(str(home / "run" / "control.sock"))
        ctl.sendall(b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe","params":{"events":["meter_reading"]}}\n')
        stream = ctl.makefile("rb")
        assert json.loads(stream.readline())["result"] == {"subscribed": ["meter_reading"]}
        event = json.loads(stream.readline())  # a reading, stored in PostgreSQL before it is published
        assert event["params"]["event"] == "meter_reading"
        ctl.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        notify.close()
        shutil.rmtree(home.parent, ignore_errors=True)
    assert proc.returncode == 0, err
    repo = open_repository(url)
    try:
        assert repo.schema_version() == CURRENT_VERSION
        assert repo.readings("EAN1", 0, 2**40)
    finally:
        repo.close()
