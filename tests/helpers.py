"""Shared test helpers: identities for a test community, a session byte pump,
and, for trio tests, ``eventually`` and ``link``.

Loaded by conftest.py (no tests/__init__.py: see pyproject's import mode).
"""

from __future__ import annotations

import grp
import inspect
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pd.sim.quiet import until
from protocol import NEED_DATA, Credential, Event, Session, SigningKey, Timeouts, TrustPolicy

if TYPE_CHECKING:
    from p2pd.net.identity import NodeIdentity
    from p2pd.net.node import Node
    from p2pd.net.peer import PeerConnection

COMMUNITY = "testcommunity"
NOW = 1_800_000_000.0


def x25519_keypair() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return priv, pub


@dataclass
class Identity:
    member_id: str
    signing: SigningKey
    noise_private: bytes
    noise_public: bytes
    credential: Credential


@dataclass
class Community:
    """An issuer plus helpers to mint member identities."""

    name: str = COMMUNITY
    issuer: SigningKey = field(default_factory=SigningKey.generate)
    revoked: set[str] = field(default_factory=set)

    def member(
        self, member_id: str, *, role: str = "prosumer", valid_from: int = int(NOW) - 86400,
        valid_until: int = int(NOW) + 86400 * 365, community: str | None = None,
        issuer: SigningKey | None = None, noise_public: bytes | None = None,
        metering_point: str = "",
    ) -> Identity:
        signing = SigningKey.generate()
        priv, pub = x25519_keypair()
        cred = Credential.issue(
            issuer or self.issuer, community=community or self.name, member_id=member_id,
            role=role, metering_point=metering_point or f"EAN{abs(hash(member_id)) % 10**15:015d}",
            sign_pk=signing.public, noise_pk=noise_public or pub,
            valid_from=valid_from, valid_until=valid_until,
        )
        return Identity(member_id, signing, priv, pub, cred)

    def policy(self) -> TrustPolicy:
        return TrustPolicy(self.name, frozenset({self.issuer.public}),
                           lambda cred: cred.member_id in self.revoked)


def session_for(ident: Identity, community: Community, *, initiator: bool, now: float = NOW,
                timeouts: Timeouts = Timeouts()) -> Session:
    return Session(initiator=initiator, static_private=ident.noise_private,
                   credential=ident.credential, policy=community.policy(), now=now,
                   timeouts=timeouts)


def drain(sess: Session) -> list[Event]:
    events: list[Event] = []
    for _ in range(10_000):
        ev = sess.next_event()
        if ev is NEED_DATA:
            return events
        assert isinstance(ev, Event)
        events.append(ev)
    raise AssertionError("session produced too many events")


class SessionPair:
    """Two sessions joined by a byte pump, like h11's ConnectionPair."""

    def __init__(self, client: Session, server: Session) -> None:
        self.client = client
        self.server = server
        self.now = NOW

    def transfer(self, src: Session, dst: Session) -> list[Event]:
        data = src.data_to_send()
        if data:
            dst.receive_data(data, self.now)
        return drain(dst)

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until quiet; return (client events, server events)."""
        cev: list[Event] = []
        sev: list[Event] = []
        for _ in range(20):
            s = self.transfer(self.client, self.server)
            c = self.transfer(self.server, self.client)
            sev += s
            cev += c
            if not s and not c and not self.client._out and not self.server._out:
                break
        return cev, sev


# --- daemon-level helpers (p2pd) ---------------------------------------------


def node_identity(ident: Identity) -> NodeIdentity:
    from p2pd.net.identity import NodeIdentity, NodeKeys

    return NodeIdentity(NodeKeys(ident.signing, ident.noise_private), ident.credential)


async def eventually(predicate: Callable[[], object], *, within: float = 5.0) -> None:
    """Return once ``predicate()`` is true; fail the test if it is not within ``within`` s.

    The one way a trio test waits for something to happen. Seconds of trio's
    clock: virtual ones under ``autojump_clock``, where the wait costs no real
    time. The predicate is looked at when no task can run and again only after
    some task has run (:func:`p2pd.sim.quiet.until`): no poll interval, no
    spinning, and no time passes while there is work to do. It must read state
    that tasks change; for "after N seconds" sleep instead.
    Raises AssertionError, quoting the predicate, when ``within`` runs out.
    """
    with trio.move_on_after(within):
        await until(predicate)
        return
    raise AssertionError(f"not true within {within} s: {_source(predicate)}")


def _source(fn: Callable[[], object]) -> str:
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return repr(fn)
    return f"{inspect.getsourcefile(fn)}:{first}: {lines[0].strip()}"


async def link(a: Node, b: Node) -> tuple[PeerConnection, PeerConnection | None]:
    """Connect node ``a`` (initiator) to node ``b`` over an in-memory stream pair.

    Returns (a's connection, b's connection) once both registered the session,
    or (a's connection, None) if b refused it. Raises PeerGone if the handshake
    fails on a's side, AssertionError if b has not decided within 5 s.
    """
    client, server = trio.testing.memory_stream_pair()
    b.nursery.start_soon(b.accept, server, "memory")
    conn = await a.connect_stream(client, "memory")

    def decided() -> bool:
        # b holds the session, or it is already over (b may register it, then refuse it).
        theirs = b.sessions.get(a.member_id)
        return (theirs is not None and theirs.peer is not None) or conn.finished.is_set()

    await eventually(decided)
    return conn, b.sessions.get(a.member_id)


# --- real services: a mosquitto broker ----------------------------------------


def read_until(fd: int, found: Callable[[bytes], bool], *, within: float,
               max_reads: int = 10_000) -> tuple[bytes, bool]:
    """Read a child's pipe ``fd`` until ``found(all read so far)``, EOF, ``within`` s or ``max_reads`` reads.

    Returns what was read and whether ``found`` said yes. Raw reads: a
    buffered readline would hide later lines from select().
    """
    import selectors
    import time

    deadline = time.monotonic() + within
    text = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        for _ in range(max_reads):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            text += chunk
            if found(text):
                return text, True
    return text, False


class Mosquitto:
    """Debian's ``mosquitto`` on a free loopback port, started and stopped by the test.

    ``start()`` returns once the broker logged that it is running (its log
    goes to stderr); ``stop()`` ends it; ``restart()`` does both on the same
    port. ``config`` lines (a listener is added) let a test require a
    password, say.
    """

    BINARY = "mosquitto"

    def __init__(self, workdir: str, config: tuple[str, ...] = ()) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.workdir = workdir
        self.config = config
        self.proc = None  # type: ignore[var-annotated]
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        import subprocess

        conf = os.path.join(self.workdir, f"mosquitto-{self.port}.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n")
            # As root, mosquitto would switch to its own user, who cannot read the test's files.
            f.write("user root\n" if os.geteuid() == 0 else "")
            f.write("allow_anonymous true\n" if not any("allow_anonymous" in c for c in self.config) else "")
            f.write("".join(line + "\n" for line in self.config))
        self.proc = subprocess.Popen([self.BINARY, "-c", conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        text, found = read_until(self.proc.stderr.fileno(), lambda got: b" running" in got, within=timeout,
                                 max_reads=1000)
        self.log = text.decode(errors="replace").splitlines()
        if found:
            return
        self.stop()
        raise RuntimeError("mosquitto did not start: " + " | ".join(self.log[-5:]))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except Exception:  # noqa: BLE001 - a stuck broker is killed
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()


# --- daemons in-process ------------------------------------------------------


def write_member(keys_dir: Path, issuer: SigningKey, *, community: str, member_id: str,
                 metering_point: str, role: str = "prosumer") -> None:
    """Write a node's keys and a credential for it, valid from an hour ago for a day, into ``keys_dir``."""
    import time

    from p2pd.net.identity import write_credential, write_node_keys

    keys = write_node_keys(keys_dir)
    now = int(time.time())
    write_credential(keys_dir / "credential", Credential.issue(
        issuer, community=community, member_id=member_id, role=role, metering_point=metering_point,
        sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=now - 3600, valid_until=now + 86400))


class DaemonCommunity:
    """Members of one test community, each with keys, a credential and a config file.

    ``config(name, extra)`` writes ``<base>/<name>/p2pd.toml`` (loopback, port 0,
    in-memory store unless given, no meter, no agent) with ``extra`` TOML
    appended, and returns the loaded :class:`p2pd.config.Config`.
    """

    def __init__(self, base: object) -> None:
        from pathlib import Path

        self.base = Path(str(base))
        self.issuer = self.make_issuer()

    def make_issuer(self):  # type: ignore[no-untyped-def]
        """The community's issuer key (in memory; a subclass may write it to a file)."""
        from protocol import SigningKey

        return SigningKey.generate()

    def config(self, name: str, extra: str = "", *, store: str = "memory://",
               meter: str = 'driver = "none"'):  # type: ignore[no-untyped-def]
        from p2pd.components import SECTIONS
        from p2pd.config import load_config

        d = self.base / name
        keys_dir = d / "state" / "keys"
        if not keys_dir.exists():
            write_member(keys_dir, self.issuer, community="dt", member_id=name, metering_point=f"EAN{name}")
        (d / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "warning"
[community]
id = "dt"
issuers = ["{self.issuer.public.hex()}"]
[p2p]
host = "127.0.0.1"
port = 0
[store]
url = "{store}"
[meter]
{meter}
[trading]
agent = false
{extra}
""")
        return load_config(d / "p2pd.toml", sections=SECTIONS)


async def trade_between(seller, buyer, wh: int = 400, offer_wh: int = 1000,  # type: ignore[no-untyped-def]
                        price: int = 90_000) -> dict:  # type: ignore[type-arg]
    """Connect two running daemons, post the seller's offer in the trading slot
    and let the buyer take ``wh`` of it; returns the buyer's trade result."""
    import time

    import trio

    from p2pd.events import OrderSeen
    from p2pd.views.summary import trading_slot

    port = int(seller.listen_addresses[0].rsplit(":", 1)[1])
    await buyer.control.call("peers.connect", {"host": "127.0.0.1", "port": port})
    community = seller.config.community
    slot = trading_slot(int(time.time()), community.slot_seconds, community.gate_closure_seconds)
    with trio.fail_after(10.0):
        async with buyer.node.events.subscribe() as events:
            order = await seller.control.call(
                "orders.post", {"side": "sell", "slot_start": slot, "wh": offer_wh, "price": price})
            async for ev in events:
                if isinstance(ev, OrderSeen) and ev.order_id == order["order_id"]:
                    break
        result: dict = await buyer.control.call(  # type: ignore[type-arg]
            "orders.take", {"order_id": order["order_id"], "wh": wh})
    return result


# --- throwaway accounts (tests that need a second uid; they run as root) -----------------

TEST_GROUP = "p2pdtest"
TEST_OPERATOR = "p2pdtest-op"  # a member of TEST_GROUP
TEST_OUTSIDER = "p2pdtest-out"  # not a member


def ensure_test_accounts() -> tuple[int, pwd.struct_passwd, pwd.struct_passwd] | str:
    """Group :data:`TEST_GROUP` and users :data:`TEST_OPERATOR` (in it) and
    :data:`TEST_OUTSIDER` (not), created if absent. Returns the group id and
    both users, or why they cannot be had (not root, no useradd): a skip reason.
    """
    if os.geteuid() != 0:
        return "needs root to create throwaway users and to become them"
    tools = [shutil.which(t) for t in ("groupadd", "useradd", "usermod")]
    if not all(tools):
        return "groupadd/useradd/usermod not installed: cannot make throwaway accounts"
    groupadd, useradd, usermod = (str(t) for t in tools)
    subprocess.run([groupadd, "-f", TEST_GROUP], check=True, capture_output=True)
    for name in (TEST_OPERATOR, TEST_OUTSIDER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run([useradd, "-M", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    subprocess.run([usermod, "-a", "-G", TEST_GROUP, TEST_OPERATOR], check=True, capture_output=True)
    gid = grp.getgrnam(TEST_GROUP).gr_gid
    operator, outsider = pwd.getpwnam(TEST_OPERATOR), pwd.getpwnam(TEST_OUTSIDER)
    assert gid in os.getgrouplist(operator.pw_name, operator.pw_gid)
    assert gid not in os.getgrouplist(outsider.pw_name, outsider.pw_gid)
    return gid, operator, outsider


# --- a real PostgreSQL server for the store tests ------------------------------------------

PG_SKIP = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
           "package (.ci/run does) to run the store tests against PostgreSQL too")


def postgres_bindir() -> Path | None:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres``: Debian's newest
    /usr/lib/postgresql/N/bin, or where ``initdb`` is on PATH. None if there is none."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, on 127.0.0.1:``port``
    with trust authentication for user ``postgres`` (tests only: fsync is off)."""

    bindir: Path
    home: Path
    port: int
    run_as: str | None
    databases: int = 0

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        self.databases += 1
        name = f"p2pd_test_{self.databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _pg(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, user=self.run_as, cwd=self.home)

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.home / "data"), "-m", "immediate", "-w", "stop")


def start_postgres(home: Path) -> PostgresServer | str:
    """initdb + pg_ctl start in ``home`` (an empty directory), as user
    ``postgres`` when we are root (PostgreSQL refuses to run as root).
    Returns the running server, or a reason to skip (no binaries)."""
    import socket

    bindir = postgres_bindir()
    if bindir is None:
        return PG_SKIP
    run_as = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no user postgres to run the PostgreSQL server as"
        run_as = "postgres"
        os.chown(home, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(bindir, home, 0, run_as)
    init = server._pg("initdb", "-D", str(home / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--no-sync", timeout=120)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    last = ""
    for _attempt in range(5):  # a free port may be taken between probing and binding
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            server.port = probe.getsockname()[1]
        opts = (f"-h 127.0.0.1 -p {server.port} -k {home} -c fsync=off -c full_page_writes=off "
                "-c synchronous_commit=off -c max_connections=200")
        start = server._pg("pg_ctl", "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-t", "60",
                           "-o", opts, "start", timeout=120)
        if start.returncode == 0:
            return server
        last = start.stderr + (home / "log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"pg_ctl start failed: {last}")


# --- the eavesdropper (tests/p2pd/test_privacy.py, tests/p2pd/privacy/) -------------------

MIN_NEEDLE = 6
"""Bytes; a shorter needle ("5 Wh") matches random ciphertext by chance (about N / 256^n
times in N bytes), so searches of a capture look only for needles this long or longer."""


class Recording(trio.abc.Stream):
    """A stream that appends everything its owner sends to ``tape``: the eavesdropper."""

    def __init__(self, inner: trio.abc.Stream, tape: bytearray) -> None:
        self.inner = inner
        self.tape = tape

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.tape += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
