"""Pseudonymous orders between real daemons (docs/protocol.md 12.8, docs/configuration.md [privacy]).

Three daemons on loopback, each with its own SQLite store: the community
operator's node ``op`` runs the pseudonym service (``[privacy] issuer_key``,
quota 3 a day), members ``alice`` and ``bob`` draw pseudonyms from it over
their sessions. Real sockets and the wall clock; every wait is bounded by
``trio.fail_after`` and waits for an event or a state, not for time.
"""

from __future__ import annotations

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
from p2pd.config import Config
from p2pd.context import DaemonContext
from p2pd.daemon import run_daemon
from p2pd.events import OrderSeen
from p2pd.market.disputes import verify_bundle
from p2pd.net.identity import load_node_keys, write_credential, write_issuer_key
from protocol import Credential, Pseudonym, SigningKey, epoch_of
from protocol.pseudonyms import anon_order_id

WAIT = 20.0
SLOT = 900
QUOTA = 3


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: a Unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="p2pdp", dir="/tmp") as d:
        yield Path(d)


class Community(DaemonCommunity):
    """The test community (tests/helpers.py), its issuer key on disk for the operator's node."""

    def make_issuer(self) -> SigningKey:
        key: SigningKey = write_issuer_key(self.base / "issuer")
        return key

    def node(self, name: str, privacy: str) -> Config:
        cfg: Config = self.config(name, f"[privacy]\n{privacy}", store=f"sqlite:///{self.base / name}/p2pd.db")
        return cfg

    def operator(self) -> Config:
        return self.node("op", f'issuer_key = "{self.base / "issuer" / "issuer.key"}"\nquota = {QUOTA}')

    def member(self, name: str) -> Config:
        return self.node(name, 'pseudonyms = true\nissuer_node = "op"\nbatch = 2\nask_timeout = 10.0')


@asynccontextmanager
async def daemon(cfg: Config) -> AsyncIterator[DaemonContext]:
    async with trio.open_nursery() as nursery:
        ctx: DaemonContext = await nursery.start(run_daemon, cfg)
        try:
            yield ctx
        finally:
            ctx.stop()


def port(ctx: DaemonContext) -> int:
    return int(ctx.listen_addresses[0].rsplit(":", 1)[1])


async def connect(a: DaemonContext, b: DaemonContext) -> None:
    await a.control.call("peers.connect", {"host": "127.0.0.1", "port": port(b)})
    await eventually(lambda: b.identity.member_id in a.node.sessions
                     and a.identity.member_id in b.node.sessions, within=WAIT)


async def wire(ctx: DaemonContext, method: str, params: Any = None) -> Any:
    """Call over the real control socket with p2pctl's client (in a thread)."""
    def call() -> Any:
        with ctl.Client(str(ctx.config.node.control_socket), timeout=WAIT) as c:
            return c.call(method, params)

    return await trio.to_thread.run_sync(call)


async def post_seen(poster: DaemonContext, seer: DaemonContext, side: str, slot: int, wh: int,
                    price: int) -> dict[str, Any]:
    """Post on ``poster`` over its control socket; return once ``seer`` has the order in its book."""
    with trio.fail_after(WAIT):
        async with seer.node.events.subscribe() as events:
            order: dict[str, Any] = await wire(
                poster, "orders.post", {"side": side, "slot_start": slot, "wh": wh, "price": price})
            if order["order_id"] not in {o["order_id"] for o in
                                         (await seer.control.call("orders.list", {}))["orders"]}:
                async for ev in events:
                    if isinstance(ev, OrderSeen) and ev.order_id == order["order_id"]:
                        break
    return order


def pseudonym_of(ctx: DaemonContext, order_id: str) -> Pseudonym:
    entry = ctx.services["market"].book[bytes.fromhex(order_id)]
    assert isinstance(entry.credential, Pseudonym)
    return entry.credential


async def test_members_trade_under_pseudonyms_from_the_operators_service(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Community(home)
    slot = (int(time.time()) // SLOT + 2) * SLOT
    async with daemon(c.operator()) as op, daemon(c.member("bob")) as bob:
        await connect(bob, op)
        key_before = op.services["privacy"][0].core.keys[epoch_of(time.time())][0]
        async with daemon(c.member("alice")) as alice:
            await connect(alice, op)
            await connect(bob, alice)

            # alice's order names a pseudonym, in every book including the issuer's.
            sell = await post_seen(alice, bob, "sell", slot, 1000, 90_000)
            assert sell["member"].startswith("ps:") and sell["mine"] is True
            for ctx in (bob, op):
                await eventually(lambda ctx=ctx: bytes.fromhex(sell["order_id"]) in ctx.services["market"].book,
                                 within=WAIT)
                [listed] = [o for o in (await wire(ctx, "orders.list"))["orders"]
                            if o["order_id"] == sell["order_id"]]
                assert listed["member"] == sell["member"] and listed["mine"] is False
            ps = pseudonym_of(bob, sell["order_id"])
            assert anon_order_id(ps.sign_pk).hex() == sell["order_id"] and "alice" not in repr(ps)

            # bob takes: only he learns, in his session with alice, whose it is.
            with trio.fail_after(WAIT):
                trade = await wire(bob, "orders.take", {"order_id": sell["order_id"], "wh": 400})
            assert (trade["seller"], trade["buyer"], trade["wh"]) == ("alice", "bob", 400)

            # bob's pseudonymous bid, taken by alice.
            bid = await post_seen(bob, alice, "buy", slot, 500, 95_000)
            assert bid["member"].startswith("ps:") and bid["member"] != sell["member"]
            with trio.fail_after(WAIT):
                back = await wire(alice, "orders.take", {"order_id": bid["order_id"], "wh": 500})
            assert (back["seller"], back["buyer"]) == ("alice", "bob")

            # The issuer attributes the receipts: both members sign them, and each
            # order id is the one its pseudonym's key derives.
            bundle = await bob.control.call("receipts.export", {})
            report = verify_bundle(bundle, {c.issuer.public})
            assert report.ok and report.receipts == 2, report.as_dict()
            path = home / "bundle.json"
            path.write_text(json.dumps(bundle))
            assert cli.main(["receipts", "verify", str(path), "--issuer", c.issuer.public.hex()]) == 0
            status = await wire(op, "status")
            assert status["privacy"]["service"]["issued_today"] == 4  # two batches of two
            wallet = (await wire(alice, "status"))["privacy"]["wallet"]
            assert wallet["unused"] == 1 and wallet["issuer_remaining"] == 1

        # alice restarts: her unused pseudonym and her live order come back.
        async with daemon(c.member("alice")) as alice:
            await connect(alice, op)
            await connect(bob, alice)
            mine = [o for o in (await wire(alice, "orders.list"))["orders"] if o["mine"]]
            assert [o["order_id"] for o in mine] == [sell["order_id"]]
            assert (await wire(alice, "status"))["privacy"]["wallet"]["unused"] == 1
            with trio.fail_after(WAIT):
                await wire(alice, "orders.cancel", {"order_id": sell["order_id"]})
            # A post the market refuses spends no pseudonym.
            with pytest.raises(ctl.RpcFailure, match="closed at"):
                await wire(alice, "orders.post", {"side": "sell", "slot_start": slot - 2 * SLOT, "wh": 1,
                                                  "price": 90_000})
            assert (await wire(alice, "status"))["privacy"]["wallet"]["unused"] == 1
            second = await post_seen(alice, bob, "sell", slot, 200, 91_000)  # the kept pseudonym
            assert (await wire(op, "status"))["privacy"]["service"]["issued_today"] == 4
            third = await post_seen(alice, bob, "sell", slot, 200, 92_000)  # asks for the last one
            assert len({sell["member"], second["member"], third["member"]}) == 3
            assert (await wire(alice, "status"))["privacy"]["wallet"]["issuer_remaining"] == 0

            # Over quota: the issuer refuses, and alice's post says why; no named order instead.
            with pytest.raises(ctl.RpcFailure) as refused:
                await wire(alice, "orders.post", {"side": "sell", "slot_start": slot, "wh": 100, "price": 93_000})
            assert refused.value.code == -32007
            assert "alice has used its 3 pseudonyms" in refused.value.message, refused.value.message
            assert refused.value.data["reason"] == "RATE_LIMITED"
            assert not [o for o in (await wire(bob, "orders.list"))["orders"] if o["member"] == "alice"]
            code = await trio.to_thread.run_sync(ctl.main, [
                "--socket", str(alice.config.node.control_socket), "post", "sell", str(slot), "100", "0.093"])
            out, err = capsys.readouterr()
            assert code == 1 and "used its 3 pseudonyms" in out + err and "Traceback" not in out + err
            code = await trio.to_thread.run_sync(ctl.main, ["--socket", str(alice.config.node.control_socket),
                                                           "status"])
            out, _ = capsys.readouterr()
            assert code == 0 and "pseudonyms 0 unused today, issuer quota left 0 (last refusal:" in out, out
            code = await trio.to_thread.run_sync(ctl.main, ["--socket", str(op.config.node.control_socket),
                                                           "status"])
            out, _ = capsys.readouterr()
            assert code == 0 and "issuing    quota 3 a day; today 5 pseudonyms to 2 members" in out, out

    # The operator restarts: the same epoch key, and alice's count is kept.
    async with daemon(c.operator()) as op, daemon(c.member("alice")) as alice:
        assert op.services["privacy"][0].core.keys[epoch_of(time.time())][0] == key_before
        await connect(alice, op)
        with pytest.raises(ctl.RpcFailure, match="used its 3 pseudonyms"):
            await wire(alice, "orders.post", {"side": "sell", "slot_start": slot, "wh": 100, "price": 93_000})


async def test_the_service_refuses_other_epochs_brokers_and_nodes_without_it_names_them(home: Path) -> None:
    from p2pd.errors import NotConnected, TradeRefused
    from p2pd.roles.issuance import RemotePseudonymSource

    c = Community(home)
    broker_cfg = c.node("brk", "")
    (home / "brk" / "state" / "keys" / "credential").unlink()
    keys = load_node_keys(home / "brk" / "state" / "keys")
    now = int(time.time())
    write_credential(home / "brk" / "state" / "keys" / "credential", Credential.issue(
        c.issuer, community="dt", member_id="brk", role="broker", metering_point="EANbrk",
        sign_pk=keys.signing.public, noise_pk=keys.noise_public, valid_from=now - 3600, valid_until=now + 86400))
    async with daemon(c.operator()) as op, daemon(c.member("alice")) as alice, daemon(broker_cfg) as brk:
        await connect(alice, op)
        await connect(brk, op)
        await connect(alice, brk)
        source: RemotePseudonymSource = alice.services["privacy"][1]
        epoch = epoch_of(time.time())
        with trio.fail_after(WAIT), pytest.raises(TradeRefused, match="neither the current") as far:
            await source.grant(epoch + 5, [bytes(256)])
        assert far.value.reason.name == "OUT_OF_BOUNDS"
        # A blinded value out of range is refused, and costs nothing.
        with trio.fail_after(WAIT), pytest.raises(TradeRefused, match="blinded value") as bad:
            await source.grant(epoch, [b"\xff" * 256])
        assert bad.value.reason.name == "INVALID_MESSAGE"
        assert op.services["privacy"][0].remaining("alice", epoch) == QUOTA

        # A broker trades for nobody: no pseudonyms for it.
        as_broker = RemotePseudonymSource(brk.node, "op", timeout=WAIT)
        with trio.fail_after(WAIT), pytest.raises(TradeRefused, match="a broker does not trade") as role:
            await as_broker.grant(epoch, [bytes(255) + b"\x01"])
        assert role.value.reason.name == "BAD_ROLE"

        # A node without the service says so; one we have no session with cannot be asked.
        source.issuer_node = "brk"
        source._keys.clear()
        with trio.fail_after(WAIT), pytest.raises(TradeRefused, match="runs no pseudonym service"):
            await source.epoch_key(epoch)
        source.issuer_node = "nobody"
        with pytest.raises(NotConnected, match="no session with the issuer's node 'nobody'"):
            await source.epoch_key(epoch)
