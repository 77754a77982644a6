"""End to end: ``p2pd run`` as a subprocess, driven by sd_notify, p2pctl and raw JSON-RPC.

Few and bounded: every wait has a deadline of a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
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

from protocol import MAX_PRICE

pytestmark = pytest.mark.slow
PY = sys.executable
DEADLINE = 15.0


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=30, check=check)


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("p2pd.cli.ctl", "--socket", str(sock), *args, check=False)


@dataclass
class Daemon:
    name: str
    dir: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None

    @property
    def sock(self) -> Path:
        return self.dir / "run" / "control.sock"

    @property
    def log(self) -> str:
        return (self.dir / "stderr.log").read_text()

    def start(self, **extra_env: str) -> None:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.dir / "notify"))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.dir / "notify"), "WATCHDOG_USEC": "400000",
               "PYTHONFAULTHANDLER": "1", **extra_env}
        env.pop("WATCHDOG_PID", None)
        with open(self.dir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen([PY, "-m", "p2pd", "run", "--config", str(self.config)],
                                         stderr=err, stdout=subprocess.DEVNULL, env=env)

    def messages(self, until: str) -> list[str]:
        """Notify datagrams received until one contains ``until``."""
        assert self.notify is not None and self.proc is not None
        got: list[str] = []
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            got.append(msg)
            if until in msg:
                return got
        raise AssertionError(f"no {until} from {self.name}; got {got}; exit={self.proc.poll()}\n{self.log}")

    def wait_log(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if text in self.log:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged by {self.name}:\n{self.log}")

    def port(self) -> int:
        status = json.loads(ctl(self.sock, "status", "--json").stdout)
        return int(status["listen"][0].rsplit(":", 1)[1])

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            self.proc.wait(timeout=DEADLINE)
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.log}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self.notify is not None:
                self.notify.close()


@pytest.fixture(scope="module")
def community() -> Iterator[tuple[Path, str, dict[str, Path]]]:
    """An issuer and two members with keys and credentials, made with the CLI."""
    with tempfile.TemporaryDirectory(prefix="p2pd-e2e", dir="/tmp") as d:
        base = Path(d)
        run("p2pd", "keygen", "--issuer", str(base / "op"))
        issuer = (base / "op" / "issuer.pub").read_text().strip()
        members = {}
        for name in ("alice", "bob"):
            keys = base / name / "state" / "keys"
            run("p2pd", "keygen", str(keys))
            run("p2pd", "credential", "issue", "--issuer-key", str(base / "op" / "issuer.key"),
                "--node-pub", str(keys / "node.pub"), "--community", "e2e", "--member-id", name,
                "--metering-point", f"EAN{name}", "--out", str(keys / "credential"))
            members[name] = base / name
        yield base, issuer, members


def make_daemon(name: str, home: Path, issuer: str, peers: list[str] = (), level: str = "info",
                extra: str = "") -> Daemon:
    config = home / "p2pd.toml"
    config.write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "{level}"
[community]
id = "e2e"
issuers = ["{issuer}"]
[p2p]
host = "127.0.0.1"
port = 0
peers = {json.dumps(list(peers))}
[meter]
driver = "simulated"
interval = 1.0
{extra}""")
    for stale in ("notify", "stderr.log"):
        (home / stale).unlink(missing_ok=True)
    return Daemon(name, home, config)


def raw(sock: Path, payload: bytes, *, lines: int = 1) -> list[Any]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(DEADLINE)
    s.connect(str(sock))
    try:
        s.sendall(payload)
    except BrokenPipeError:
        pass
    buf = b""
    while buf.count(b"\n") < lines:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def test_daemon_lifecycle_control_api_and_signals(community: tuple[Path, str, dict[str, Path]]) -> None:
    _, issuer, members = community
    d = make_daemon("alice", members["alice"], issuer)
    d.start()
    try:
        msgs = d.messages("READY=1")
        assert any("STATUS=member alice" in m for m in msgs)
        assert "WATCHDOG=1" in "".join(d.messages("WATCHDOG=1"))
        assert (d.sock.stat().st_mode & 0o777) == 0o660

        out = ctl(d.sock, "status", "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["member_id"] == "alice" and status["sessions"] == [] and status["uptime_s"] >= 0
        assert status["meter"]["driver"] == "simulated"
        human = ctl(d.sock, "status")
        assert human.returncode == 0 and "member     alice (prosumer) in community e2e" in human.stdout

        # Hostile and broken requests: each gets its error; the daemon keeps serving.
        assert raw(d.sock, b"{nope\n")[0]["error"]["code"] == -32700
        assert raw(d.sock, b'{"jsonrpc":"2.0","id":1,"method":"orders.nuke"}\n')[0]["error"]["code"] == -32601
        bad = raw(d.sock, b'{"jsonrpc":"2.0","id":2,"method":"peers.connect","params":{"host":"x","port":"80"}}\n')
        assert bad[0]["error"]["code"] == -32602 and "port must be an integer" in bad[0]["error"]["message"]
        # Over 1 MiB, complete or not: one -32006 each, and the connection goes on.
        huge = raw(d.sock, b'{"jsonrpc":"2.0","id":3,"method":"status","params":"' + b"x" * (3 << 19) + b'"}\n'
                   + b'{"jsonrpc":"2.0","id":4,"method":"status"}\n', lines=2)
        assert huge[0]["error"]["code"] == -32006 and huge[1]["id"] == 4 and "result" in huge[1]
        assert ctl(d.sock, "call", "peers.disconnect", '{"member_id": "nobody"}').returncode == 1
        unreachable = ctl(d.sock, "connect", "127.0.0.1:1")
        assert unreachable.returncode == 1 and "-32002" in unreachable.stderr
        assert ctl(d.sock, "connect", "not-an-address").returncode == 2
        if os.getuid() == 0:
            # Another uid cannot even open the socket (mode 0660, owner root).
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    socket.socket(socket.AF_UNIX).connect(str(d.sock))
                    os._exit(1)
                except PermissionError:
                    os._exit(0)
                except BaseException:
                    os._exit(2)
            assert os.waitpid(pid, 0)[1] == 0
        assert ctl(d.sock, "status", "--json").returncode == 0

        # SIGHUP reloads: the new log level and a component's section ([limits],
        # the policing component's) apply, a port change needs a restart.
        d.config.write_text(d.config.read_text().replace('log_level = "info"', 'log_level = "debug"')
                            .replace("port = 0", "port = 1") + "[limits]\ngossip_rate = 5.0\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("event=config_reloaded applied=node.log_level,sections.limits restart_required=p2p.port")
        # p2pctl reload validates the components' sections as config check does.
        text = d.config.read_text()
        d.config.write_text(text + f"[trading]\nsell_price = {MAX_PRICE + 1}\n")
        reload = ctl(d.sock, "reload")
        assert reload.returncode == 1, reload.stderr
        assert f"[trading].sell_price: expected an integer 0..{MAX_PRICE}" in reload.stderr
        d.config.write_text(text.replace("port = 1", 'port = "abc"'))
        reload = ctl(d.sock, "reload")
        assert reload.returncode == 1 and '[p2p].port: expected an integer 0..65535, got "abc"' in reload.stderr
        # NaN rates are refused on reload too, and limits.show stays strict JSON.
        d.config.write_text(text.replace("gossip_rate = 5.0", "gossip_rate = nan\nnode_capacity = nan"))
        reload = ctl(d.sock, "reload")
        assert reload.returncode == 1 and "[limits].gossip_rate: expected a finite number" in reload.stderr
        shown = ctl(d.sock, "call", "limits.show")
        assert shown.returncode == 0, shown.stderr
        limits = json.loads(shown.stdout, parse_constant=lambda c: pytest.fail(f"{c} in limits.show"))["limits"]
        assert limits["gossip_rate"] == 5.0 and limits["node_capacity"] == 2000.0
    finally:
        code = d.stop()
    assert code == 0, d.log
    assert "event=stopping" in d.log and "event=stopped" in d.log
    assert not d.sock.exists()
    gone = ctl(d.sock, "status", "--json")
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_two_daemons_connect_through_static_peers(community: tuple[Path, str, dict[str, Path]]) -> None:
    _, issuer, members = community
    alice = make_daemon("alice", members["alice"], issuer)
    alice.start()
    bob: Daemon | None = None
    try:
        alice.messages("READY=1")
        bob = make_daemon("bob", members["bob"], issuer, peers=[f"127.0.0.1:{alice.port()}"])
        bob.start()
        bob.messages("READY=1")
        deadline = time.monotonic() + DEADLINE
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            for d, _other in ((alice, "bob"), (bob, "alice")):
                st = json.loads(ctl(d.sock, "status", "--json").stdout)
                seen[d.name] = [s["member_id"] for s in st["sessions"]]
            if seen == {"alice": ["bob"], "bob": ["alice"]}:
                break
            time.sleep(0.1)
        assert seen == {"alice": ["bob"], "bob": ["alice"]}, (alice.log, bob.log)
        peers = ctl(bob.sock, "peers")
        assert peers.returncode == 0 and "alice" in peers.stdout
    finally:
        codes = [d.stop() for d in (alice, bob) if d is not None]
    assert codes == [0, 0]
    # alice accepted bob's connection; stopping her still tells bob why.
    assert bob is not None and "event=peer_closed peer=alice" in bob.log
    assert "reason=SHUTDOWN" in bob.log.split("event=peer_closed peer=alice", 1)[1].split("\n", 1)[0]


async def _member_sends(issuer_key: Path, port: int, plaintext: bytes) -> tuple[Any, str]:
    """Join as member "mallory", send one transport frame holding ``plaintext``.

    Returns the reason and text of the Close the daemon answers with.
    """
    import trio
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from p2pd.net.identity import load_issuer_key
    from protocol import (
        NEED_DATA,
        ConnectionClosed,
        Credential,
        Session,
        SigningKey,
        TrustPolicy,
        frame,
    )

    issuer = load_issuer_key(issuer_key)
    noise = X25519PrivateKey.generate()
    noise_private = noise.private_bytes_raw()
    now = int(time.time())
    cred = Credential.issue(
        issuer, community="e2e", member_id="mallory", role="prosumer", metering_point="EANmallory",
        sign_pk=SigningKey.generate().public, noise_pk=noise.public_key().public_bytes_raw(),
        valid_from=now - 60, valid_until=now + 3600)
    sess = Session(initiator=True, static_private=noise_private, credential=cred,
                   policy=TrustPolicy("e2e", frozenset({issuer.public}), lambda c: False), now=now)
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        sent = False
        while True:
            if sess.has_data_to_send:
                await stream.send_all(sess.data_to_send())
            if sess.established and not sent:
                # Bypass our own schema check: this is what a hostile member sends.
                await stream.send_all(frame(sess._transport.encrypt(plaintext)))  # type: ignore[union-attr]
                sent = True
            data = await stream.receive_some(65536)
            sess.receive_data(data, time.time())
            while (event := sess.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    await stream.aclose()
                    return event.reason, event.message


def test_nested_message_from_a_member_closes_its_session_only(
        community: tuple[Path, str, dict[str, Path]]) -> None:
    # Issue 17, finding 1: `92 01`, `91` x 990, `90` stopped the daemon (exit 1).
    import trio

    from protocol import Reason

    base, issuer, members = community
    alice = make_daemon("alice", members["alice"], issuer)
    alice.start()
    bob: Daemon | None = None
    try:
        alice.messages("READY=1")
        port = alice.port()
        nested = b"\x92\x01" + b"\x91" * 990 + b"\x90"
        reason, text = trio.run(_member_sends, base / "op" / "issuer.key", port, nested)
        assert reason == Reason.INVALID_MESSAGE and len(text) < 100
        assert alice.proc is not None and alice.proc.poll() is None
        # The node goes on serving others: bob connects and both see the session.
        bob = make_daemon("bob", members["bob"], issuer, peers=[f"127.0.0.1:{port}"])
        bob.start()
        bob.messages("READY=1")
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            st = json.loads(ctl(alice.sock, "status", "--json").stdout)
            if [s["member_id"] for s in st["sessions"]] == ["bob"]:
                break
            time.sleep(0.1)
        assert [s["member_id"] for s in st["sessions"]] == ["bob"], alice.log
        assert "RecursionError" not in alice.log
    finally:
        codes = [d.stop() for d in (alice, bob) if d is not None]
    assert codes == [0] * len(codes), alice.log


def rpc(sock: Path, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON-RPC call over the control socket (faster than a p2pctl process per call)."""
    request = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}
    reply: dict[str, Any] = raw(sock, json.dumps(request).encode() + b"\n")[0]
    return reply


def wait_until(what: str, check: Any) -> Any:
    """Poll ``check()`` (a few times a second) until it returns something true, for DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_seller_disk_fills_mid_trading_refuses_takes_and_resumes(
        community: tuple[Path, str, dict[str, Path]]) -> None:
    # Issue 12, point 4: on a full disk a peer's Take ended the daemon (exit 1).
    # SQLite's page cap (the test hook test.store_max_pages) answers SQLITE_FULL
    # exactly as a full disk does.
    import store

    _, issuer, members = community
    alice = make_daemon("alice", members["alice"], issuer)
    (members["alice"] / "state" / "p2pd.db").unlink(missing_ok=True)
    # A slow watchdog: the test reads STATUS= late, and the socket holds 10 datagrams.
    alice.start(P2PD_TEST_HOOKS="1", WATCHDOG_USEC="30000000")
    bob: Daemon | None = None
    acknowledged: set[str] = set()
    try:
        alice.messages("READY=1")
        bob = make_daemon("bob", members["bob"], issuer, peers=[f"127.0.0.1:{alice.port()}"])
        bob.start()
        bob.messages("READY=1")
        slot = (int(time.time()) // 900 + 2) * 900
        posted = ctl(alice.sock, "post", "sell", str(slot), "1000000", "0.09", "--json")
        assert posted.returncode == 0, posted.stderr
        order = json.loads(posted.stdout)["order_id"]
        wait_until("the order at bob", lambda: any(
            o["order_id"] == order for o in rpc(bob.sock, "orders.list")["result"]["orders"]))
        first = ctl(bob.sock, "take", order, "10", "--json")
        assert first.returncode == 0, first.stderr
        acknowledged.add(json.loads(first.stdout)["trade_id"])
        since = {s["member_id"]: s["since"] for s in rpc(alice.sock, "status")["result"]["sessions"]}

        assert rpc(alice.sock, "test.store_max_pages", {"pages": 0})["result"] == {"max_pages": 0}
        before_full = len(acknowledged)
        refused = None
        for _ in range(500):  # bounded: a few pages of receipts at most
            reply = rpc(bob.sock, "orders.take", {"order_id": order, "wh": 10})
            if "error" in reply:
                refused = reply["error"]
                break
            acknowledged.add(reply["result"]["trade_id"])
        assert refused is not None and refused["code"] == -32007, refused
        assert refused["data"]["reason"] == "STORAGE_UNAVAILABLE" and len(refused["data"]["trade_id"]) == 32

        # The seller lives on, says why, and keeps its sessions.
        assert alice.proc is not None and alice.proc.poll() is None
        take = ctl(bob.sock, "take", order, "10")
        assert take.returncode == 1 and "STORAGE_UNAVAILABLE" in take.stderr and "store" in take.stderr
        status = json.loads(ctl(alice.sock, "status", "--json").stdout)
        assert status["store"]["state"] == "failing" and "full" in status["store"]["last_error"]
        assert {s["member_id"]: s["since"] for s in status["sessions"]} == since
        assert "store      failing since" in ctl(alice.sock, "status").stdout
        assert any("STATUS=member alice" in m and "store failing since" in m
                   for m in alice.messages("store failing since"))
        assert alice.log.count("event=store_failing") == 1
        assert "event=internal_error" not in alice.log and "Traceback" not in alice.log

        # Space returns (the cap is lifted): trading resumes by itself.
        assert rpc(alice.sock, "test.store_max_pages")["result"] == {"max_pages": None}
        again = ctl(bob.sock, "take", order, "10", "--trade-id", refused["data"]["trade_id"], "--json")
        assert again.returncode == 0, again.stderr
        acknowledged.add(json.loads(again.stdout)["trade_id"])
        status = wait_until("store ok", lambda: (s := rpc(alice.sock, "status")["result"])["store"]["state"]
                            == "ok" and s)
        assert status["store"]["episodes"] == 1
        alice.wait_log("event=store_recovered")
        assert alice.log.count("event=store_recovered") == 1
        market = status["market"]["counters"]
        print(f"full disk: {before_full} takes accepted, cap set, {len(acknowledged) - before_full - 1} more "
              f"accepted until the pages ran out, {market.get('takes_refused:STORAGE_UNAVAILABLE')} refused "
              f"with STORAGE_UNAVAILABLE, then the refused trade id accepted once lifted; store "
              f"{status['store']}; readings dropped {status['counters'].get('readings_unstored', 0)}")
    finally:
        codes = [d.stop() for d in (alice, bob) if d is not None]
    assert codes == [0] * len(codes), alice.log
    # Every receipt bob was given is in alice's store.
    repo = store.open_repository(f"sqlite:///{members['alice'] / 'state' / 'p2pd.db'}")
    try:
        stored = {r.trade_id.hex() for r in repo.receipts()}
        assert acknowledged <= stored and len(acknowledged) >= 2
        assert repo.integrity_check() == "ok"
    finally:
        repo.close()



STOP_BOUND = 25.0  # p2pd.daemon.STOP_TIMEOUT_S: under the unit's TimeoutStopSec=30s
# 20 in the issue's soak (P2PD_SIGTERMS=20); fewer by default keeps the suite short on a busy machine.
SIGTERMS = int(os.environ.get("P2PD_SIGTERMS", "10"))


def test_the_stop_bound_is_under_systemds_and_ends_a_wedged_stop(tmp_path: Path) -> None:
    import re

    from p2pd.daemon import STOP_TIMEOUT_S

    unit = (Path(__file__).parents[2] / "systemd" / "p2pd.service").read_text()
    match = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
    assert match is not None and STOP_BOUND == STOP_TIMEOUT_S < int(match.group(1))
    # A stop that cannot finish (here: a main thread that never returns) ends
    # at the bound with a reason and every thread's stack, not at SIGKILL.
    code = ("import time\nfrom p2pd import log\nfrom p2pd.daemon import _StopDeadline\n"
            "log.setup()\n_StopDeadline(0.3).start()\ntime.sleep(30)\n")
    started = time.monotonic()
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert "event=stop_timeout after_s=0.3 action=exit" in done.stderr
    assert "(most recent call first)" in done.stderr  # faulthandler's dump of the threads


async def _rpc_async(sock: Path, method: str, params: dict[str, Any]) -> dict[str, Any]:
    import trio

    stream = await trio.open_unix_socket(str(sock))
    async with stream:
        await stream.send_all(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                          "params": params}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the control connection")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
    return reply


async def _sigterm_bursts(members: dict[str, Path], issuer: str, rounds: int) -> dict[str, Any]:
    """SIGTERM bob (the buyer) and alice (the seller) in turn, each in the middle of a burst of takes.

    Bob's control socket gets 64 concurrent ``orders.take`` calls; after a
    random moment the victim gets SIGTERM and must exit 0, having logged
    ``stopped``, within STOP_BOUND; then it is started again. Returns the
    stop times, the trade ids bob's control answered with a receipt, and the
    order id. Fails at the first stop that overruns (with the stacks).
    """
    import random

    import trio

    rng = random.Random(12)
    acknowledged: set[str] = set()
    stops: list[tuple[str, float]] = []
    # Bursts far above the default trade rate (20/s per member): no policing.
    limits = "[limits]\ntrade_rate = 100000.0\ncontrol_rate = 100000.0\n"
    daemons = {name: make_daemon(name, members[name], issuer, extra=limits) for name in ("alice", "bob")}

    async def start(name: str) -> Daemon:
        d = daemons[name] = make_daemon(name, members[name], issuer, extra=limits)
        d.start(WATCHDOG_USEC="60000000")
        await trio.to_thread.run_sync(d.messages, "READY=1")
        return d

    flowing = trio.Event()  # a take of the current burst was acknowledged

    async def taker(sock: Path, order: str) -> None:
        for _ in range(100_000):  # bounded; cancelled after the stop
            try:
                reply = await _rpc_async(sock, "orders.take", {"order_id": order, "wh": 1})
            except (OSError, trio.BrokenResourceError):
                return  # bob is going
            if "error" in reply:
                return  # refused (SHUTDOWN), gone or no answer: alice is going
            acknowledged.add(reply["result"]["trade_id"])
            flowing.set()

    try:
        alice, bob = await start("alice"), await start("bob")
        slot = (int(time.time()) // 900 + 2) * 900
        posted = await trio.to_thread.run_sync(ctl, alice.sock, "post", "sell", str(slot), "1000000", "0.09",
                                               "--json")
        order = json.loads(posted.stdout)["order_id"]
        for round_ in range(rounds):
            alice, bob = daemons["alice"], daemons["bob"]
            port = await trio.to_thread.run_sync(alice.port)
            with trio.fail_after(DEADLINE):
                while not any(o["order_id"] == order
                              for o in (await _rpc_async(bob.sock, "orders.list", {}))["result"]["orders"]):
                    await _rpc_async(bob.sock, "peers.connect", {"host": "127.0.0.1", "port": port})
                    await trio.sleep(0.05)
            victim = bob if round_ % 2 == 0 else alice
            assert victim.proc is not None
            # One take answered first: bob's book can outlive alice's restart,
            # and on a loaded machine the session may not be up yet.
            with trio.fail_after(DEADLINE):
                while "error" in (reply := await _rpc_async(bob.sock, "orders.take", {"order_id": order, "wh": 1})):
                    await _rpc_async(bob.sock, "peers.connect", {"host": "127.0.0.1", "port": port})
                    await trio.sleep(0.05)
                acknowledged.add(reply["result"]["trade_id"])
            flowing = trio.Event()
            async with trio.open_nursery() as burst:
                for _ in range(64):  # as many as a session serves at once
                    burst.start_soon(taker, bob.sock, order)
                await trio.sleep(rng.uniform(0.1, 0.5))  # takes in flight at both...
                with trio.fail_after(DEADLINE):
                    await flowing.wait()  # ...and flowing: on a loaded machine 0.5 s may pass before one is done
                started = time.monotonic()
                victim.proc.send_signal(signal.SIGTERM)
                try:
                    code = await trio.to_thread.run_sync(victim.proc.wait, STOP_BOUND + 5)
                except subprocess.TimeoutExpired:
                    victim.proc.send_signal(signal.SIGABRT)  # faulthandler: every stack
                    await trio.to_thread.run_sync(victim.proc.wait, DEADLINE)
                    raise AssertionError(f"SIGTERM {round_ + 1} to {victim.name}: no exit in "
                                         f"{STOP_BOUND + 5} s:\n{victim.log[-8000:]}") from None
                stops.append((victim.name, time.monotonic() - started))
                burst.cancel_scope.cancel()
            assert code == 0, victim.log[-4000:]
            assert "event=stopping" in victim.log and "event=stopped" in victim.log, victim.log[-4000:]
            victim.stop()
            await start(victim.name)
    finally:
        for d in daemons.values():
            if d.proc is not None:
                d.stop()
    return {"stops": stops, "acknowledged": acknowledged, "order_id": order}


def test_sigterm_during_take_bursts_always_stops_within_the_bound(
        community: tuple[Path, str, dict[str, Path]]) -> None:
    # Issue 12, point 5: in 5 of 21 SIGTERMs during a burst the daemon logged
    # `stopping` and never `stopped` (a take waited, shielded, on the receipt
    # writer that was already cancelled).
    import trio

    import store

    _, issuer, members = community
    for name in ("alice", "bob"):
        for suffix in ("", "-wal", "-shm"):
            (members[name] / "state" / f"p2pd.db{suffix}").unlink(missing_ok=True)
    out = trio.run(_sigterm_bursts, members, issuer, SIGTERMS)
    times = [t for _, t in out["stops"]]
    print(f"{len(times)} SIGTERMs during take bursts (buyer and seller in turn): stop times "
          f"{min(times):.2f}..{max(times):.2f} s, {len(out['acknowledged'])} takes acknowledged")
    assert len(times) == SIGTERMS and max(times) < STOP_BOUND
    # No acknowledged receipt is lost: every take bob's control answered with a
    # receipt is in bob's store and in alice's.
    for name in ("alice", "bob"):
        repo = store.open_repository(f"sqlite:///{members[name] / 'state' / 'p2pd.db'}")
        try:
            stored = {r.trade_id.hex() for r in repo.receipts_for_order(bytes.fromhex(out["order_id"]))}
            missing = sorted(out["acknowledged"] - stored)
            assert not missing, f"acknowledged receipts lost at {name}: {missing}"
            assert repo.integrity_check() == "ok"
        finally:
            repo.close()


# --- issue 16: pseudonyms across kill -9 ---------------------------------------------------


@pytest.fixture
def privacy_community() -> Iterator[tuple[Path, str]]:
    with tempfile.TemporaryDirectory(prefix="p2pd-kill", dir="/tmp") as d:
        base = Path(d)
        run("p2pd", "keygen", "--issuer", str(base / "issuer"))
        for name in ("op", "alice"):
            keys = base / name / "state" / "keys"
            run("p2pd", "keygen", str(keys))
            run("p2pd", "credential", "issue", "--issuer-key", str(base / "issuer" / "issuer.key"),
                "--node-pub", str(keys / "node.pub"), "--community", "e2e", "--member-id", name,
                "--metering-point", f"EAN{name}", "--out", str(keys / "credential"))
        yield base, (base / "issuer" / "issuer.pub").read_text().strip()


def _status(d: Daemon) -> dict[str, Any]:
    done = ctl(d.sock, "status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _until(what: str, check: Callable[[], bool], *daemons: Daemon) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not {what} in {DEADLINE} s:\n" + "\n".join(d.log for d in daemons))


def _post(d: Daemon, slot: int, wh: int) -> dict[str, Any]:
    done = ctl(d.sock, "--json", "post", "sell", str(slot), str(wh), "0.09")
    assert done.returncode == 0, done.stdout + done.stderr
    order: dict[str, Any] = json.loads(done.stdout)
    return order


def test_a_members_wallet_and_pseudonymous_order_survive_kill_9(privacy_community: tuple[Path, str]) -> None:
    """[privacy]: the operator's node issues from the issuer's key file; alice is killed with SIGKILL
    right after posting. On restart her order is still hers, her kept pseudonym is used without
    asking again, and no pseudonym signs two orders."""
    base, issuer = privacy_community
    slot = (int(time.time()) // 900 + 2) * 900
    op = make_daemon("op", base / "op", issuer, extra=f"""[store]
url = "sqlite:///{base / 'op' / 'p2pd.db'}"
[trading]
agent = false
[privacy]
issuer_key = "{base / 'issuer' / 'issuer.key'}"
quota = 4
""")
    op.start()
    alice: Daemon | None = None
    try:
        op.messages("READY=1")
        member = f"""[store]
url = "sqlite:///{base / 'alice' / 'p2pd.db'}"
[trading]
agent = false
[privacy]
pseudonyms = true
issuer_node = "op"
batch = 2
"""
        alice = make_daemon("alice", base / "alice", issuer, peers=[f"127.0.0.1:{op.port()}"], extra=member)
        alice.start()
        alice.messages("READY=1")
        _until("connected", lambda: [s["member_id"] for s in _status(alice)["sessions"]] == ["op"], alice, op)

        first = _post(alice, slot, 300)
        assert first["member"].startswith("ps:") and _status(op)["privacy"]["service"]["issued_today"] == 2
        assert alice.proc is not None
        alice.proc.send_signal(signal.SIGKILL)
        assert alice.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
        alice.stop()

        alice = make_daemon("alice", base / "alice", issuer, peers=[f"127.0.0.1:{op.port()}"], extra=member)
        alice.start()
        alice.messages("READY=1")
        _until("connected", lambda: [s["member_id"] for s in _status(alice)["sessions"]] == ["op"], alice, op)
        mine = [o for o in json.loads(ctl(alice.sock, "--json", "orders").stdout)["orders"] if o["mine"]]
        assert [o["order_id"] for o in mine] == [first["order_id"]]
        assert _status(alice)["privacy"]["wallet"]["unused"] == 1

        second = _post(alice, slot, 200)  # the pseudonym kept across the kill: no new ask
        assert _status(op)["privacy"]["service"]["issued_today"] == 2
        third = _post(alice, slot, 100)  # a new batch (the two left of the quota of 4)
        assert _status(op)["privacy"]["service"]["issued_today"] == 4
        assert len({first["member"], second["member"], third["member"]}) == 3
    finally:
        codes = [d.stop() for d in (alice, op) if d is not None]
    assert codes == [0, 0]
