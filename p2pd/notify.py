"""systemd's sd_notify protocol, without libsystemd.

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: a Unix datagram socket
path, or an abstract-namespace name written with a leading ``@``. Each
datagram is newline-separated ``KEY=VALUE`` lines: ``READY=1``,
``STATUS=text``, ``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1``. With
``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``);
we ping at half that interval. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import trio

from p2pd import log


class Notifier:
    """Sends notifications to ``NOTIFY_SOCKET`` if set; never raises for send failures."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.dropped = 0
        """Notifications dropped in a row (the manager's queue full, or an error)."""
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``lines`` without ever blocking; returns False if not sent.

        The socket is non-blocking: when the reader lags and its queue is
        full, the datagram is dropped (counted in ``dropped``) instead of
        freezing the event loop -- a blocked sendto() once stopped the whole
        daemon, SIGTERM included. Logged once per run of drops; WATCHDOG and
        STATUS are sent again anyway.
        """
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode("utf-8", "replace"), target)
        except OSError as exc:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("sd_notify_failed", socket=self.address, error=exc.strerror or str(exc))
            return False
        self.dropped = 0
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec and self.enabled else None

    async def serve_watchdog(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping ``WATCHDOG=1`` every :attr:`watchdog_interval` seconds, forever.

        Runs in the daemon's root nursery, so a wedged trio loop stops the
        pings and systemd restarts us. Returns at once if there is no watchdog.
        """
        task_status.started()
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(interval)
