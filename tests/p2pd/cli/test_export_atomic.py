"""``p2pctl receipts export --out FILE`` is all or nothing (issue 12, point 7).

FILE is either absent, the old file, or the complete new bundle: never a
truncated one, whether p2pctl is killed half way or a write fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio
from p2pd_test_helpers import NOW, Community

from p2pd.cli import ctl
from p2pd.cli import main as cli
from p2pd.cli.ctl_commands import ReceiptsExport
from p2pd.control.server import ControlServer, Param, serve_control
from p2pd.market.disputes import export_bundle
from protocol.trading import Receipt, TradeTerms

SLOT = 900
OLD = '{"format": "p2pd-receipts/1", "old": true}\n'


def signed_bundle(n: int) -> tuple[dict[str, object], Community]:
    """A genuine bundle: ``n`` receipts alice -> bob, both credentials."""
    c = Community()
    alice, bob = c.member("alice"), c.member("bob")
    slot = (int(NOW) // SLOT + 2) * SLOT
    receipts = []
    for i in range(n):
        terms = TradeTerms(i.to_bytes(16, "big"), b"o" * 16, 10 * n, "alice", "bob", slot, SLOT, 10,
                           90_000, int(NOW))
        receipts.append(Receipt(terms, terms.sign(alice.signing), terms.sign(bob.signing)).encode())
    return export_bundle(c.name, receipts, [alice.credential, bob.credential]), c


def render(out: Path, bundle: dict[str, object]) -> str:
    export = ReceiptsExport()
    export.out = str(out)
    return export.render(bundle)


def test_export_replaces_the_file_whole_and_it_verifies(tmp_path: Path) -> None:
    out = tmp_path / "receipts.json"
    out.write_text(OLD)
    bundle, c = signed_bundle(3)
    assert "wrote 3 receipts" in render(out, bundle)
    assert json.loads(out.read_text()) == bundle
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receipts.json"]  # no temporary file left
    assert cli.main(["receipts", "verify", str(out), "--issuer", c.issuer.public.hex()]) == 0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "receipts.json"
    out.write_text(OLD)

    def broken_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_disk)
    with pytest.raises(OSError):
        render(out, signed_bundle(3)[0])
    assert out.read_text() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receipts.json"]


# The child writes a bundle of several MB under RLIMIT_FSIZE = 1 MB: the
# kernel kills it with SIGXFSZ (Python ignores that signal; the child
# restores the default) in the middle of the write, as a kill -9 would.
CHILD = """
import resource, signal, sys
from p2pd.cli.ctl_commands import ReceiptsExport
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
bundle = {"format": "p2pd-receipts/1", "community": "c", "credentials": [],
          "receipts": ["93" * 200] * 20000}
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
export = ReceiptsExport()
export.out = sys.argv[1]
export.render(bundle)
"""


@pytest.mark.parametrize("existing", [True, False])
def test_p2pctl_killed_mid_export_leaves_no_truncated_bundle(tmp_path: Path, existing: bool) -> None:
    out = tmp_path / "receipts.json"
    if existing:
        out.write_text(OLD)
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGXFSZ, done.stderr.decode()[-2000:]
    if existing:
        assert out.read_text() == OLD
    else:
        assert not out.exists()
    # What the kill left is a temporary file beside it, never FILE itself.
    assert all(p.name.startswith(".receipts.json.") for p in tmp_path.iterdir() if p != out)


async def test_p2pctl_says_why_it_cannot_write_the_bundle(nursery: trio.Nursery, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    server = ControlServer()
    server.register("receipts.export", lambda **kw: signed_bundle(1)[0],
                    {"since": Param(int, required=False), "member": Param(str, required=False)})
    with tempfile.TemporaryDirectory(prefix="p2pctl", dir="/tmp") as d:
        sock = Path(d) / "control.sock"
        await nursery.start(serve_control, server, sock)
        out = tmp_path / "missing-dir" / "receipts.json"
        code = await trio.to_thread.run_sync(ctl.main, ["--socket", str(sock), "receipts", "export",
                                                        "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == ctl.EXIT_RPC_ERROR and "p2pctl: cannot write" in err and "Traceback" not in err
    assert not out.parent.exists()
