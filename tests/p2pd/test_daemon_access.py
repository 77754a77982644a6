"""Who may use the control socket of a running ``p2pd run`` (issue 13, point 5).

The README tells operators to join group ``p2pd`` to use ``p2pctl`` without
root. Here the daemon runs (as root) with a throwaway group as its group, as
systemd's ``Group=p2pd`` would make it; forked children become throwaway
users and connect: a member of the group is served, a user outside it cannot
open the socket, and a process that holds the group although its user is not
a member (it left the group but is still logged in) is refused by the daemon.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pd_test_helpers import ensure_test_accounts, write_member

from protocol import SigningKey

pytestmark = pytest.mark.slow
DEADLINE = 15.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Path, int, pwd.struct_passwd, pwd.struct_passwd]]:
    """``p2pd run`` with the throwaway group as its group; yields its socket and the accounts."""
    accounts = ensure_test_accounts()
    if isinstance(accounts, str):
        pytest.skip(accounts)
    gid, operator, outsider = accounts
    issuer = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="p2pda", dir="/tmp") as tmp:
        home = Path(tmp)
        home.chmod(0o755)  # others may reach run/, which the daemon makes 0750 with its group
        write_member(home / "state" / "keys", issuer, community="c", member_id="alice", metering_point="EAN1")
        (home / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
[community]
id = "c"
issuers = ["{issuer.public.hex()}"]
[p2p]
host = "127.0.0.1"
port = 0
[store]
url = "memory://"
[meter]
driver = "none"
""")
        sock = home / "run" / "control.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(home / "notify"))
        notify.settimeout(DEADLINE)
        with open(home / "stderr.log", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "p2pd", "run", "--config", str(home / "p2pd.toml")],
                                    stdout=subprocess.DEVNULL, stderr=err, group=gid,
                                    env={**os.environ, "NOTIFY_SOCKET": str(home / "notify")})
        try:
            for _ in range(100):  # bounded: READY=1 follows a few STATUS= datagrams
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except TimeoutError:
                    pytest.fail(f"p2pd run did not get ready: {(home / 'stderr.log').read_text()}")
            assert sock.stat().st_gid == gid and sock.stat().st_mode & 0o777 == 0o660
            # The daemon made run/ (not there before) for its group to reach the socket.
            assert sock.parent.stat().st_mode & 0o777 == 0o750
            yield sock, gid, operator, outsider
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=DEADLINE) == 0, (home / "stderr.log").read_text()
            finally:
                notify.close()
                if proc.poll() is None:
                    proc.kill()


# Outcomes a child reports through its exit status.
SERVED, REFUSED, NO_ACCESS, OTHER = 10, 11, 12, 13


def _status_as(sock: Path, user: pwd.struct_passwd, groups: list[int]) -> int:
    """Fork a child that becomes ``user`` with supplementary ``groups`` and asks for status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = OTHER
        try:
            os.setgroups(groups)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(DEADLINE)
            try:
                s.connect(str(sock))
            except PermissionError:
                code = NO_ACCESS
            else:
                try:
                    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
                except BrokenPipeError:  # refused before we wrote: the answer is still there to read
                    pass
                buf = b""
                while b"\n" not in buf and len(buf) < 1 << 20:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                reply = json.loads(buf.split(b"\n", 1)[0])
                if reply.get("result", {}).get("member_id") == "alice":
                    code = SERVED
                elif reply.get("error", {}).get("code") == -32004 and "group p2pdtest" in reply["error"]["message"]:
                    code = REFUSED
        except BaseException:
            code = OTHER
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_member_of_the_sockets_group_is_served(
        daemon: tuple[Path, int, pwd.struct_passwd, pwd.struct_passwd]) -> None:
    sock, gid, operator, _ = daemon
    # As after `usermod -aG p2pd operator` and a new login: the group is in the process's groups.
    assert _status_as(sock, operator, [gid]) == SERVED


def test_a_user_outside_the_group_cannot_open_the_socket(
        daemon: tuple[Path, int, pwd.struct_passwd, pwd.struct_passwd]) -> None:
    sock, _, _, outsider = daemon
    assert _status_as(sock, outsider, []) == NO_ACCESS


def test_a_process_holding_the_group_of_a_user_outside_it_is_refused(
        daemon: tuple[Path, int, pwd.struct_passwd, pwd.struct_passwd]) -> None:
    sock, gid, _, outsider = daemon
    # Removed from the group but still logged in: the file mode lets the
    # process connect, the daemon's check (the group database) refuses it.
    assert _status_as(sock, outsider, [gid]) == REFUSED


def test_the_unit_lets_group_members_reach_the_socket() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "p2pd.service").read_text()
    keys = [line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    settings = {k: v for k, v in keys}
    assert settings["User"] == settings["Group"] == "p2pd"
    assert settings["RuntimeDirectory"] == "p2pd" and settings["RuntimeDirectoryMode"] == "0750"
    # A private user namespace would show every operator to SO_PEERCRED as nobody.
    assert "PrivateUsers" not in settings


def test_in_group_reads_the_group_database() -> None:
    from p2pd.control.server import PeerCred, default_peer_allowed, in_group

    me = pwd.getpwuid(os.getuid())
    groups = os.getgrouplist(me.pw_name, me.pw_gid)
    assert all(in_group(me.pw_uid, -1, g) for g in groups)
    assert in_group(4_000_000_000, 7, 7)  # the process's own gid counts, even with no user name
    assert not in_group(4_000_000_000, 7, 8)
    assert default_peer_allowed(PeerCred(1, os.getuid(), -1), None)
    assert default_peer_allowed(PeerCred(1, 0, 0), None)
    assert not default_peer_allowed(PeerCred(1, 4_000_000_000, 7), None)
    assert default_peer_allowed(PeerCred(1, 4_000_000_000, 7), 7)
