"""Issue 15: the commands as people run them: `p2pd` and `p2pctl` processes against real daemons.

One community for the module, made with the CLI: an operator, a hub that
listens, and two households (``sun`` sells, ``moon`` buys) that only dial
the hub and never learn each other's address (``exchange = false``), as
households behind NATs. Every wait is bounded and waits for something (a
READY=1 datagram, an answer), never a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
DEADLINE = 20.0
BIN = Path(sys.executable).parent


def command(name: str) -> list[str]:
    """The installed console script, as a user runs it; else the module."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "p2pd" if name == "p2pd" else "p2pd.cli.ctl"]


def p2pd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command("p2pd"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@dataclass
class Daemon:
    name: str
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.home / "run" / "control.sock"

    @property
    def log(self) -> str:
        return (self.home / "stderr.log").read_text()

    def ctl(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command("p2pctl"), "--socket", str(self.sock), *args], capture_output=True,
                              text=True, timeout=60, env=env)

    def ctl_json(self, *args: str) -> Any:
        done = self.ctl("--json", *args)
        assert done.returncode == 0, (done.stdout, done.stderr, self.log)
        return json.loads(done.stdout)

    def start(self) -> None:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self.home / "notify"
        path.unlink(missing_ok=True)
        notify.bind(str(path))
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "PYTHONFAULTHANDLER": "1"}
        env.pop("WATCHDOG_USEC", None)
        with open(self.home / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen([*command("p2pd"), "run", "--config", str(self.home / "p2pd.toml")],
                                         stderr=err, stdout=subprocess.DEVNULL, env=env)
        with notify:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                notify.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except TimeoutError:
                    break
        raise AssertionError(f"{self.name} not ready; exit={self.proc.poll()}\n{self.log}")

    def port(self) -> int:
        return int(self.ctl_json("status")["listen"][0].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def wait_until(what: str, check: Any) -> Any:
    """Ask ``check()`` until it answers something true, for DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Street:
    base: Path
    issuer_pub: str
    hub: Daemon
    sun: Daemon
    moon: Daemon


def _member(base: Path, name: str, issuer_pub: str, peers: list[str], exchange: bool) -> Daemon:
    home = base / name
    keys = home / "state" / "keys"
    for args in (("keygen", str(keys)),
                 ("credential", "issue", "--issuer-key", str(base / "op" / "issuer.key"),
                  "--node-pub", str(keys / "node.pub"), "--community", "street", "--member-id", name,
                  "--metering-point", f"EAN{name}", "--out", str(keys / "credential"))):
        done = p2pd(*args)
        assert done.returncode == 0, done.stderr
    (home / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
[community]
id = "street"
issuers = ["{issuer_pub}"]
[p2p]
host = "127.0.0.1"
port = 0
peers = {json.dumps(peers)}
exchange = {str(exchange).lower()}
[meter]
driver = "none"
[trading]
agent = false
[tariffs]
currency = "EUR"
import_price = 300000
export_price = 80000
""")
    return Daemon(name, home)


@pytest.fixture(scope="module")
def street() -> Iterator[Street]:
    with tempfile.TemporaryDirectory(prefix="p2pd-u", dir="/tmp") as d:
        base = Path(d)
        assert p2pd("keygen", "--issuer", str(base / "op")).returncode == 0
        issuer_pub = (base / "op" / "issuer.pub").read_text().strip()
        hub = _member(base, "hub", issuer_pub, [], exchange=True)
        started: list[Daemon] = []
        try:
            hub.start()
            started.append(hub)
            peers = [f"127.0.0.1:{hub.port()}"]
            sun = _member(base, "sun", issuer_pub, peers, exchange=False)
            moon = _member(base, "moon", issuer_pub, peers, exchange=False)
            for d in (sun, moon):
                d.start()
                started.append(d)
            for d in (sun, moon):
                wait_until(f"{d.name} connected to the hub",
                           lambda d=d: [s["member_id"] for s in d.ctl_json("status")["sessions"]] == ["hub"])
            yield Street(base, issuer_pub, hub, sun, moon)
        finally:
            for d in started:
                d.stop()


def test_a_revocation_list_made_with_p2pd_is_installed_with_p2pctl(street: Street) -> None:
    # Issue 15, point 7: `p2pctl revoke list.rl` needed a file nothing could make.
    op, out = street.base / "op", street.base / "list.rl"
    done = p2pd("revocation", "issue", "--issuer-key", str(op / "issuer.key"), "--member", "mallory",
                "--serial", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"wrote revocation list serial 1 revoking mallory to {out}; "
                                   f"install it with: p2pctl revoke {out}")
    shown = p2pd("revocation", "show", str(out), "--issuer", str(op / "issuer.pub"))
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^members +mallory$", shown.stdout, re.M)
    assert re.search(r"^signature +valid$", shown.stdout, re.M)
    # A serial that is not newer would be ignored by every node: refused.
    again = p2pd("revocation", "issue", "--issuer-key", str(op / "issuer.key"), "--member", "eve",
                 "--serial", "1", "--out", str(out), "--json")
    assert again.returncode == 2 and "not newer than serial 1" in json.loads(again.stderr)["error"]["message"]

    installed = street.hub.ctl("revoke", str(out))
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith(f"installed serial 1 of {street.issuer_pub[:16]}...: revoked mallory")
    # It spreads: every household holds it soon.
    for d in (street.sun, street.moon):
        wait_until(f"the list at {d.name}",
                   lambda d=d: [x["members"] for x in d.ctl_json("revocations")["lists"]] == [["mallory"]])

    # The next list keeps mallory (--from) and adds eve; a tampered copy is rejected.
    nxt = street.base / "list2.rl"
    done = p2pd("revocation", "issue", "--issuer-key", str(op / "issuer.key"), "--from", str(out),
                "--member", "eve", "--out", str(nxt), "--json")
    assert done.returncode == 0, done.stderr
    assert {k: json.loads(done.stdout)[k] for k in ("serial", "members")} == {
        "serial": 2, "members": ["eve", "mallory"]}
    data = bytearray(bytes.fromhex(nxt.read_text()))
    data[-1] ^= 1
    (street.base / "bad.rl").write_bytes(bytes(data))
    bad = p2pd("revocation", "show", str(street.base / "bad.rl"), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["signature_valid"] is False
    assert json.loads(bad.stderr)["error"]["kind"] == "rejected"
    # A file that is no list at all, or none: one line naming it, as the daemon's config check says it.
    (street.base / "junk.rl").write_bytes(b"not a list")
    for name, says in (("junk.rl", "junk.rl is not a revocation list: "), ("gone.rl", "gone.rl: No such file")):
        shown = p2pd("revocation", "show", str(street.base / name))
        assert shown.returncode == 2 and says in shown.stderr, shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1 and "Traceback" not in shown.stderr
    # Issue 15, point 6: p2pd's own errors are JSON under --json too.
    missing = p2pd("config", "check", str(street.base / "nowhere.toml"), "--json")
    assert missing.returncode == 78 and missing.stdout == ""
    assert json.loads(missing.stderr)["error"]["kind"] == "config"



README = Path(__file__).resolve().parents[3] / "README.md"


def readme_command(prefix: str) -> list[str]:
    """The README's example line starting with ``prefix``, without its comment, as argv."""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith(prefix):
            return line.split("#", 1)[0].split()
    raise AssertionError(f"no line starting {prefix!r} in README.md")


def test_prices_and_slots_people_can_type_and_read(street: Street) -> None:
    # Issue 15, point 5: prices were money units (90000), slots absolute times
    # (the README's example slot was a fixed date), the currency was never shown.
    sun = street.sun
    info = sun.ctl_json("call", "market.info")
    assert info["currency"] == "EUR" and info["slot_seconds"] == 900

    # The README's example, as written, works today.
    argv = readme_command("p2pctl post ")
    assert argv[:3] == ["p2pctl", "post", "sell"] and argv[3].startswith("+")
    done = sun.ctl(*argv[1:])
    assert done.returncode == 0 and done.stderr == "", (done.stdout, done.stderr)
    assert re.fullmatch(r"posted sell order [0-9a-f]{32}: 1000 Wh for the slot \d{4}-\d\d-\d\d \d\d:\d\d UTC "
                        r"at 0\.09 EUR/kWh, open until .* UTC\n", done.stdout), done.stdout
    order = done.stdout.split()[3].rstrip(":")
    mine = [o for o in sun.ctl_json("orders")["orders"] if o["order_id"] == order][0]
    hours = int(argv[3][1:-1])
    assert mine["price"] == 90_000 and mine["slot_start"] % 900 == 0
    assert 0 <= mine["slot_start"] - (info["now"] + hours * 3600) < 900 + 60
    table = sun.ctl("orders")
    assert "PRICE EUR/KWH" in table.stdout and f"{order}" in table.stdout and " 0.09 " in table.stdout
    iso = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(mine["slot_start"]))
    at = sun.ctl_json("orders", "--slot", iso)["orders"]
    assert [o["order_id"] for o in at] == [order]

    # Outside [export tariff, retail price]: a warning, then the order.
    low = sun.ctl("post", "sell", "+1h", "100", "0.05")
    assert low.returncode == 0, low.stderr
    assert low.stderr == ("p2pctl: warning: selling at 0.05 EUR/kWh is below the export tariff "
                          "0.08 EUR/kWh: exporting to the supplier pays more\n")
    high = sun.ctl("post", "buy", "+1h", "100", "0.35", "--json")
    assert high.returncode == 0 and json.loads(high.stdout)["price"] == 350_000
    assert json.loads(high.stderr)["warning"]["kind"] == "price_outside_tariffs"

    # Refusals name the rule and the times it implies.
    far = sun.ctl("post", "sell", "+3d", "1000", "0.09")
    assert far.returncode == 1
    assert "slot too far ahead: at most 48 h (the latest slot now starts" in far.stderr, far.stderr
    assert "reason OUT_OF_BOUNDS" in far.stderr
    past = sun.ctl("post", "sell", "2024-03-01T12:00", "1000", "0.09")
    assert past.returncode == 1 and ("trading for the slot 2024-03-01 12:00 UTC closed at "
                                     "2024-03-01 11:55 UTC (gate closure: 5 min before each slot)") in past.stderr
    odd = sun.ctl("post", "sell", str(info["next_slot"] + 60), "1000", "0.09", "--json")
    assert odd.returncode == 1
    assert "is not the start of a slot: slots start every 15 min" in json.loads(odd.stderr)["error"]["message"]
    units = sun.ctl("post", "sell", "next", "1000", "90000")
    assert units.returncode == 2 and "must be between 0.000001 and 100.00 EUR/kWh" in units.stderr
    fine = sun.ctl("post", "sell", "next", "1000", "0.0000001")
    assert fine.returncode == 2 and "more decimals than the money unit (0.000001 EUR)" in fine.stderr


def test_households_that_cannot_reach_each_other_trade_through_the_hub(street: Street) -> None:
    # Issue 15, point 10: a take needed a direct session with the seller; sun
    # and moon only ever dial the hub (as behind NATs) and now trade through it.
    sun, moon, hub = street.sun, street.moon, street.hub
    posted = sun.ctl_json("post", "sell", "+4h", "800", "0.12")
    order = posted["order_id"]
    wait_until("the order at moon", lambda: any(o["order_id"] == order for o in moon.ctl_json("orders")["orders"]))
    assert "sun" not in [s["member_id"] for s in moon.ctl_json("status")["sessions"]]

    argv = readme_command("p2pctl take ")
    assert argv[:3] == ["p2pctl", "take", "ORDER"]
    took = moon.ctl("take", order, argv[3])
    assert took.returncode == 0, (took.stderr, moon.log, hub.log)
    assert took.stdout.startswith("trade ") and f"sun -> moon, {argv[3]} Wh" in took.stdout
    assert "at 0.12 EUR/kWh" in took.stdout
    trade_id = took.stdout.split()[1].rstrip(":")
    # Both ends hold the receipt; the hub only passed it on.
    for d, side, other in ((sun, "sell", "moon"), (moon, "buy", "sun")):
        trades = d.ctl_json("trades")["trades"]
        assert [(t["trade_id"], t["side"], t["counterparty"]) for t in trades] == [(trade_id, side, other)]
    assert hub.ctl_json("trades")["trades"] == []
    counters = hub.ctl_json("status")["counters"]
    assert counters["relay_takes"] == 1 and counters["relay_answers"] == 1
    # A refusal comes back through the hub too, signed, with what is left.
    refused = moon.ctl("--json", "take", order, "700")
    assert refused.returncode == 1
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == -32007 and error["data"]["reason"] == "INSUFFICIENT"
    assert error["data"]["remaining_wh"] == 800 - int(argv[3])
