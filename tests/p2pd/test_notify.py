"""sd_notify never blocks the daemon (issue 13, point 7)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from p2pd.notify import Notifier


def test_a_reader_that_never_reads_cannot_freeze_the_sender(tmp_path: Path) -> None:
    # When systemd (or anyone holding NOTIFY_SOCKET) lags, the datagram queue
    # fills; a blocking sendto() then froze the whole trio loop.
    path = tmp_path / "notify"
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    sent: list[bool] = []
    worker = threading.Thread(target=lambda: sent.extend(notifier.notify("WATCHDOG=1") for _ in range(5000)),
                              daemon=True)
    worker.start()
    worker.join(timeout=10)
    try:
        assert not worker.is_alive(), "notify() blocked on a full queue"
        assert len(sent) == 5000 and sent[0] is True
        assert notifier.dropped == sent.count(False) > 0  # the queue filled; later ones were dropped
        assert reader.recv(64) == b"WATCHDOG=1"  # what was queued is intact
        assert notifier.notify("STATUS=still here") or notifier.dropped > 0
    finally:
        reader.close()
