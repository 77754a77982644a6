"""The daemon's components in-process: run_daemon twice on loopback, driven over the control API.

Real sockets and the wall clock (no autojump: it would jump while sockets
wait); every wait is bounded by ``trio.fail_after`` and waits for an event,
not for time.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from p2pd_test_helpers import DaemonCommunity, eventually

from p2pd.cli import ctl
from p2pd.cli import main as cli
from p2pd.components import SECTIONS
from p2pd.config import Config, load_config
from p2pd.context import DaemonContext
from p2pd.daemon import run_daemon
from p2pd.errors import PeerGone
from p2pd.events import Banned, OrderSeen, SessionClosed
from p2pd.market.disputes import verify_bundle
from p2pd.net.identity import (
    NodeIdentity,
    NodeKeys,
    load_credential,
    load_node_keys,
)
from p2pd.net.listener import dial
from p2pd.net.node import open_node
from protocol import Credential, SigningKey, TrustPolicy, issue_revocation
from protocol.trading import OrdersRequest

WAIT = 10.0
SLOT = 900


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: a Unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="p2pdt", dir="/tmp") as d:
        yield Path(d)


class Community(DaemonCommunity):
    """The test community of tests/helpers.py; ``member`` is its ``config``."""

    def member(self, name: str, extra: str = "", store: str = "memory://") -> Config:
        cfg: Config = self.config(name, extra, store=store)
        return cfg


@asynccontextmanager
async def daemons(*configs: Config) -> AsyncIterator[list[DaemonContext]]:
    async with trio.open_nursery() as nursery:
        ctxs = [await nursery.start(run_daemon, cfg) for cfg in configs]
        try:
            yield ctxs
        finally:
            for c in ctxs:
                c.stop()


def port(ctx: DaemonContext) -> int:
    return int(ctx.listen_addresses[0].rsplit(":", 1)[1])


async def connect(a: DaemonContext, b: DaemonContext) -> None:
    await a.control.call("peers.connect", {"host": "127.0.0.1", "port": port(b)})


async def wire(ctx: DaemonContext, method: str, params: Any = None) -> Any:
    """Call over the real control socket with p2pctl's client (in a thread)."""
    def call() -> Any:
        with ctl.Client(str(ctx.config.node.control_socket), timeout=WAIT) as c:
            return c.call(method, params)

    return await trio.to_thread.run_sync(call)


async def p2pctl(ctx: DaemonContext, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await trio.to_thread.run_sync(
        ctl.main, ["--socket", str(ctx.config.node.control_socket), *argv])
    out, err = capsys.readouterr()
    return code, out + err


async def test_two_daemons_trade_by_hand(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Community(home)
    async with daemons(c.member("alice"), c.member("bob")) as (alice, bob):
        await connect(bob, alice)
        slot = (int(time.time()) // SLOT + 2) * SLOT
        with trio.fail_after(WAIT):
            async with bob.node.events.subscribe() as events:
                order = await alice.control.call(
                    "orders.post", {"side": "sell", "slot_start": slot, "wh": 1000, "price": 90_000})
                async for ev in events:
                    if isinstance(ev, OrderSeen) and ev.order_id == order["order_id"]:
                        break
        listed = await bob.control.call("orders.list", {"slot_start": slot})
        assert [o["order_id"] for o in listed["orders"]] == [order["order_id"]]
        assert listed["orders"][0]["mine"] is False and listed["orders"][0]["member"] == "alice"

        with trio.fail_after(WAIT):
            trade = await wire(bob, "orders.take", {"order_id": order["order_id"], "wh": 400})
        assert (trade["seller"], trade["buyer"], trade["wh"]) == ("alice", "bob", 400)
        assert trade["amount"] == 400 * 90_000 // 1000
        for ctx, side, other in ((alice, "sell", "bob"), (bob, "buy", "alice")):
            trades = (await ctx.control.call("trades.list"))["trades"]
            assert [(t["trade_id"], t["side"], t["counterparty"]) for t in trades] == [
                (trade["trade_id"], side, other)]
        assert (await bob.control.call("trades.list", {"member": "carol"}))["trades"] == []

        # Over-taking is refused with the protocol reason in data.
        with trio.fail_after(WAIT), pytest.raises(ctl.RpcFailure) as refused:
            await wire(bob, "orders.take", {"order_id": order["order_id"], "wh": 700})
        assert refused.value.code == -32007
        data = refused.value.data
        assert data == {"reason": "INSUFFICIENT", "remaining_wh": 600, "trade_id": data["trade_id"]}
        assert len(data["trade_id"]) == 32
        with pytest.raises(ctl.RpcFailure) as unknown:
            await wire(bob, "orders.cancel", {"order_id": order["order_id"]})
        assert unknown.value.code == -32007 and unknown.value.data == {"reason": "NOT_FOUND"}

        bundle = await bob.control.call("receipts.export", {})
        report = verify_bundle(bundle, {c.issuer.public})
        assert report.ok and report.receipts == 1, report.as_dict()

        status = await wire(alice, "status")
        assert status["market"]["trades"] == 1 and status["market"]["our_orders"] == 1
        assert "policing" in status and status["settlement"] == {"enabled": False}
        assert status["meter"] is None

        # p2pctl: human tables, --json, and the bundle checked offline.
        code, out = await p2pctl(bob, "trades", capsys=capsys)
        assert code == 0 and trade["trade_id"] in out and "alice" in out and "0.0360" in out
        code, out = await p2pctl(bob, "--json", "orders", capsys=capsys)
        assert code == 0 and json.loads(out)["orders"][0]["remaining_wh"] is None
        path = home / "bundle.json"
        code, out = await p2pctl(bob, "receipts", "export", "--out", str(path), capsys=capsys)
        assert code == 0 and "wrote 1 receipts" in out, out
        assert cli.main(["receipts", "verify", str(path), "--issuer", c.issuer.public.hex()]) == 0
        code, out = await p2pctl(alice, "cancel", order["order_id"], capsys=capsys)
        assert code == 0 and "cancelled" in out
        code, out = await p2pctl(alice, "take", order["order_id"], "5", capsys=capsys)
        assert code == 1 and "-32007" in out


BAD_PARAMS = [
    ("orders.post", {"side": "hold", "slot_start": 1, "wh": 1, "price": 1}),
    ("orders.post", {"side": "sell", "slot_start": 1, "wh": 0, "price": 1}),
    ("orders.take", {"order_id": "zz", "wh": 1}),
    ("orders.take", {"order_id": "00" * 16, "wh": 1, "trade_id": "abc"}),
    ("orders.cancel", {}),
    ("trades.list", {"since": "yesterday"}),
    ("readings.list", {"start": 10, "end": 5}),
    ("statements.list", {"period": "year"}),
    ("bans.clear", {"member_id": 5}),
    ("revocations.install", {"list_hex": "nothex"}),
]


async def test_revoked_members_bans_and_bad_params(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Community(home)
    first = issue_revocation(c.issuer, ["mallory"], 1, time.time())
    (home / "revoked.hex").write_text(first.encode().hex() + "\n")
    limits = f"""
[revocations]
lists = ["{home / 'revoked.hex'}"]
[limits]
gossip_rate = 1.0
burst_seconds = 1.0
grace = 0.0
max_excess = 3
"""
    alice_cfg = c.member("alice", limits, store=f"sqlite:///{home}/alice.db")
    async with daemons(alice_cfg, c.member("bob")) as (alice, bob):
        for method, params in BAD_PARAMS:
            with pytest.raises(ctl.RpcFailure) as bad:
                await wire(alice, method, params)
            assert bad.value.code == -32602, (method, bad.value.message)

        # Mallory is refused at the handshake.
        mallory = c.member("mallory")
        ident = NodeIdentity(load_keys(home / "mallory"), load_cred(home / "mallory"))
        policy = TrustPolicy("dt", frozenset({c.issuer.public}))
        async with open_node(ident, policy) as node:
            with trio.fail_after(WAIT):
                try:
                    # The initiator may finish its side of the handshake
                    # before the responder checks its credential and closes.
                    conn = await dial(node, "127.0.0.1", port(alice))
                except PeerGone:
                    pass
                else:
                    await conn.finished.wait()
        assert "mallory" not in alice.node.sessions and mallory.community.id == "dt"
        assert alice.node.counters["handshake_failed:REVOKED"] == 1, alice.node.counters

        # Bob floods gossip past his allowance: banned, visible, clearable.
        await connect(bob, alice)
        with trio.fail_after(WAIT):
            async with alice.node.events.subscribe() as events:
                conn = bob.node.sessions["alice"]
                try:
                    for _ in range(20):
                        await conn.send(OrdersRequest())
                except PeerGone:
                    pass
                async for ev in events:
                    if isinstance(ev, Banned):
                        break
        bans = (await wire(alice, "bans.list"))["bans"]
        assert [b["member_id"] for b in bans] == ["bob"] and bans[0]["count"] == 1
        # The ban is kept in the store, so a restart does not forgive it. The
        # store write follows the ban event in another task and announces
        # nothing: look at the store once that task has run.
        await eventually(lambda: alice.repo.bans(int(time.time())), within=WAIT)
        assert [b.member_id for b in alice.repo.bans(int(time.time()))] == ["bob"]
        code, out = await p2pctl(alice, "bans", capsys=capsys)
        assert code == 0 and "bob" in out
        code, out = await p2pctl(alice, "unban", "bob", capsys=capsys)
        assert code == 0 and "lifted the ban on bob" in out
        assert (await wire(alice, "bans.list"))["bans"] == []
        await eventually(lambda: not alice.repo.bans(int(time.time())), within=WAIT)
        assert (await wire(alice, "bans.clear", {"member_id": "bob"}))["cleared"] is False
        limits_shown = await wire(alice, "limits.show")
        assert limits_shown["limits"]["gossip_rate"] == 1.0 and limits_shown["limits"]["max_excess"] == 3

        # Bob may come back; then a newer list revokes him and cuts him off.
        with trio.fail_after(WAIT):
            await connect(bob, alice)
        second = issue_revocation(c.issuer, ["bob", "mallory"], 2, time.time())
        with trio.fail_after(WAIT):
            async with alice.node.events.subscribe() as events:
                got = await wire(alice, "revocations.install", {"list_hex": second.encode().hex()})
                assert got["installed"] is True and got["members"] == ["bob", "mallory"]
                async for ev in events:
                    if isinstance(ev, SessionClosed) and ev.member == "bob":
                        assert ev.reason == "REVOKED"
                        break
        again = await wire(alice, "revocations.install", {"list_hex": first.encode().hex()})
        assert again == {**again, "installed": False, "current_serial": 2}
        stranger = issue_revocation(SigningKey.generate(), ["alice"], 9, time.time())
        with pytest.raises(ctl.RpcFailure) as rejected:
            await wire(alice, "revocations.install", {"list_hex": stranger.encode().hex()})
        assert rejected.value.code == -32008

    # The newer list survives a restart (kept in the store).
    async with daemons(alice_cfg) as (alice,):
        lists = (await alice.control.call("revocations.list"))["lists"]
        assert [(x["serial"], x["members"]) for x in lists] == [(2, ["bob", "mallory"])]


def load_keys(d: Path) -> NodeKeys:
    return load_node_keys(d / "state" / "keys")


def load_cred(d: Path) -> Credential:
    return load_credential(d / "state" / "keys" / "credential")


class _Probe:
    """A component run last: what the node looked like when every component had started."""

    name = "probe"
    section = None

    def __init__(self) -> None:
        self.connections = -1
        self.handlers: set[str] = set()

    async def start(self, ctx: DaemonContext) -> None:
        self.connections = len(ctx.node.connections)
        self.handlers = {t.__name__ for t in ctx.node.handlers}


async def test_no_message_is_lost_at_start(home: Path) -> None:
    # Issue 15, point 9: the listener and discovery started before the
    # components, so a session opened at once got its peer's OrdersRequest
    # and HeadGossip before any handler existed (unhandled_message=1).
    from p2pd.components import COMPONENTS

    c = Community(home)
    async with daemons(c.member("bob")) as (bob,):
        probe = _Probe()
        c.member("alice")
        path = home / "alice" / "p2pd.toml"
        path.write_text(path.read_text().replace(
            "port = 0\n", f'port = 0\npeers = ["127.0.0.1:{port(bob)}"]\n', 1))
        alice_cfg = load_config(path, sections=SECTIONS)
        async with trio.open_nursery() as nursery:
            alice = await nursery.start(functools.partial(
                run_daemon, alice_cfg, components=[*COMPONENTS, probe]))
            try:
                # No session may open (no accept, no dial) before the last component started.
                assert probe.connections == 0
                assert {"OrdersRequest", "HeadGossip", "Take"} <= probe.handlers
                slot = (int(time.time()) // SLOT + 2) * SLOT
                # Messages of a session are handled in order: once each side
                # sees the other's order, everything sent before it was handled.
                for poster, seer in ((alice, bob), (bob, alice)):
                    with trio.fail_after(WAIT):
                        async with seer.node.events.subscribe() as events:
                            order = await poster.control.call(
                                "orders.post", {"side": "sell", "slot_start": slot, "wh": 10,
                                                "price": 90_000})
                            async for ev in events:
                                if isinstance(ev, OrderSeen) and ev.order_id == order["order_id"]:
                                    break
                for d in (alice, bob):
                    assert d.node.counters["unhandled_message"] == 0, d.node.counters
            finally:
                alice.stop()
