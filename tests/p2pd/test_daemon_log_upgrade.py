"""A daemon started on a store from before heads were signed as p2pd/log-head/2 upgrades it once,
says so in one log line, and serves its own log rebuilt with the same seqs (docs/protocol.md 15,
"Upgrading from log-entry/1"). In-process daemon, real SQLite store, no peers.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from p2pd_test_helpers import NOW

from p2pd.components import SECTIONS
from p2pd.config import Config, load_config
from p2pd.context import DaemonContext
from p2pd.daemon import run_daemon
from p2pd.net.identity import write_credential, write_issuer_key, write_node_keys
from protocol import Credential, Receipt, ReceiptChain, TradeTerms
from store import HeadRecord, ReceiptRecord, ReplicaRecord, SqlRepository

WAIT = 20.0


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: a Unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="p2pdu", dir="/tmp") as d:
        yield Path(d)


def _config(base: Path) -> Config:
    issuer = write_issuer_key(base / "issuer")
    d = base / "alice"
    keys = write_node_keys(d / "state" / "keys")
    now = int(time.time())
    write_credential(d / "state" / "keys" / "credential", Credential.issue(
        issuer, community="up", member_id="alice", role="prosumer", metering_point="EANalice",
        sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=now - 3600, valid_until=now + 86400))
    (d / "p2pd.toml").write_text(f"""
[node]
state_dir = "state"
runtime_dir = "run"
log_level = "info"

[community]
id = "up"
issuers = ["{issuer.public.hex()}"]

[p2p]
host = "127.0.0.1"
port = 0

[store]
url = "sqlite:///{d}/p2pd.db"

[meter]
driver = "none"

[trading]
agent = false
""")
    return load_config(d / "p2pd.toml", sections=SECTIONS)


def _receipts() -> list[bytes]:
    out = []
    for n in (1, 2, 3):
        terms = TradeTerms(bytes([n]) * 16, b"o" * 16, 1000, "alice", "bob", int(NOW) // 900 * 900 + 1800,
                           900, 100 * n, 80_000, int(NOW))
        out.append(Receipt(terms, bytes(64), bytes(64)).encode())
    return out


def _version_4_store(cfg: Config) -> None:
    """alice's store as the previous release left it: her three receipts at seqs 1-3, a head
    and a raw-receipt replica of carol's, schema version 4."""
    r = SqlRepository(cfg.store.url)
    try:
        for i, e in enumerate(_receipts(), start=1):
            t = Receipt.decode(e).terms
            r.commit_receipts([ReceiptRecord(t.trade_id, t.order_id, t.seller, t.buyer, t.slot_start, t.slot_len,
                                             t.wh, t.price, t.order_wh, e, i)])
        r.put_head(HeadRecord("carol", 1, b"H" * 32, b"S" * 64))
        r.put_replica(ReplicaRecord("carol", 1, b"carol's receipt", b"carol's old head"))
    finally:
        r.close()
    with sqlite3.connect(cfg.store.url.removeprefix("sqlite:///")) as c:
        c.execute("UPDATE schema_meta SET version = 4")
    c.close()


async def _run_once(cfg: Config) -> tuple[int, bytes]:
    """Start the daemon, read its log's seq and head hash, stop it."""
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            ctx: DaemonContext = await nursery.start(run_daemon, cfg)
            status = ctx.services["replication"].status()
            ctx.stop()
    return int(status["seq"]), bytes.fromhex(status["head"])


async def test_the_daemon_upgrades_an_old_store_once_and_says_so_in_one_line(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(home)
    _version_4_store(cfg)
    chain = ReceiptChain()
    for e in _receipts():
        chain.append(e)
    assert await _run_once(cfg) == (3, chain.head_hash)  # same seqs, the log-entry/2 chain
    lines = [line for line in capsys.readouterr().err.splitlines() if "store_upgraded" in line]
    assert len(lines) == 1 and lines[0].startswith("level=INFO event=store_upgraded")
    assert "kept 3 own receipts at log seqs 1..3" in lines[0]
    assert "dropped 1 heads and 1 held entries of other members" in lines[0]
    # The next start finds nothing to upgrade.
    assert await _run_once(cfg) == (3, chain.head_hash)
    assert "store_upgraded" not in capsys.readouterr().err
