"""Where the broker is and how to log in: :class:`Broker`, from a URL and files.

No I/O here but :func:`read_credentials`, which reads one small file.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from dataclasses import dataclass, field

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
MAX_CREDENTIALS_BYTES = 4096


@dataclass(frozen=True)
class Broker:
    """An MQTT broker: address, TLS and login.

    ``tls`` turns on TLS with the system's CA certificates, or ``ca_file``'s;
    ``cert_file`` and ``key_file`` give a client certificate. ``username`` and
    ``password`` are sent in CONNECT (over TLS only, one hopes).
    """

    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883, TLS).

    Returns ``(host, port, tls)``. Raises ``ValueError`` with a message fit
    for a configuration error: another scheme, no host, a path, a user name
    in the URL (credentials belong in a file, not in the configuration).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a broker URL ({exc})") from exc
    if parts.scheme not in SCHEMES:
        raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put the user name and password in a credentials file, not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a broker URL has no path, query or fragment")
    tls, default_port = SCHEMES[parts.scheme]
    return parts.hostname, port or default_port, tls


def read_credentials(path: str) -> tuple[str, str]:
    """The user name (first line) and password (second line) in the file at ``path``.

    Raises ``OSError`` if it cannot be read, ``ValueError`` if it is
    readable by everyone (mode o+r), larger than 4 KiB or not two non-empty
    lines of UTF-8.
    """
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & stat.S_IROTH:
            raise ValueError(f"{path} is readable by everyone: chmod o-r {path}")
        raw = f.read(MAX_CREDENTIALS_BYTES + 1)
    if len(raw) > MAX_CREDENTIALS_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CREDENTIALS_BYTES} bytes")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text") from exc
    if len(lines) < 2 or not lines[0] or not lines[1] or any(line.strip() for line in lines[2:]):
        raise ValueError(f"{path}: expected the user name on the first line and the password "
                         "on the second")
    return lines[0], lines[1]
