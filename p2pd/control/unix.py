"""Who may use the control socket, and the socket itself (docs/control-api.md "Access").

The socket is mode 0660, so only its owner, its group and root can connect;
the daemon then checks the connecting process with SO_PEERCRED
(:func:`default_peer_allowed`): its own uid, root, and members of the
socket's group in the system's group database.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import trio

from p2pd.errors import ConfigError, Unavailable


@dataclass(frozen=True)
class PeerCred:
    """The connecting process, as the kernel reports it (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    """Its effective group id at connect time (not its supplementary groups)."""


def in_group(uid: int, gid: int, group: int) -> bool:
    """True if ``gid`` is ``group``, or the user ``uid`` belongs to ``group``
    in the system's user and group database (``os.getgrouplist``).

    Blocking: it may ask NSS (LDAP, sssd); call it in a thread.
    """
    if gid == group:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:  # a uid with no user name has no groups to look up
        return False
    try:
        return group in os.getgrouplist(user.pw_name, user.pw_gid)
    except OSError:
        return False


def default_peer_allowed(peer: PeerCred, group: int | None) -> bool:
    """The daemon's own uid, root, or a member of ``group`` (the socket's group;
    None when unknown, e.g. a memory stream): see :func:`in_group`. Blocking."""
    if peer.uid in (os.getuid(), 0):
        return True
    return group is not None and in_group(peer.uid, peer.gid, group)


def group_name(gid: int) -> str:
    """``gid``'s name, or the number if it has none. Blocking (NSS)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


SO_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid


def peer_credentials(sock: trio.socket.SocketType) -> PeerCred | None:
    """The connecting process (Linux SO_PEERCRED), or None if unavailable."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:  # pragma: no cover - not Linux
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize(SO_PEERCRED_FORMAT))
    except OSError:
        return None
    pid, uid, gid = struct.unpack(SO_PEERCRED_FORMAT, raw)
    return PeerCred(int(pid), int(uid), int(gid))


def prepare_path(path: Path) -> None:
    if len(os.fsencode(path)) >= 108:
        raise ConfigError(f"control socket path {path} is too long for a Unix socket (max 107 bytes)")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale socket of a daemon that died
    else:
        raise Unavailable(f"another daemon is listening on {path}")
    finally:
        probe.close()


def bind_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening Unix socket at ``path`` (mode 0660) and the inode it made.

    Raises :class:`ConfigError` if the path is unusable, :class:`Unavailable`
    if another daemon holds it.
    """
    prepare_path(path)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket owner/group-only from the moment it exists;
    # chmod afterwards would leave a window where others could connect.
    old = os.umask(0o117)
    try:
        raw.bind(str(path))
    except OSError as exc:
        raw.close()
        raise ConfigError(f"cannot create control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    inode = os.stat(path).st_ino
    raw.listen(64)
    return raw, inode


def remove_socket(path: Path, inode: int) -> None:
    """Unlink ``path`` if it is still our socket (not a successor's)."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
