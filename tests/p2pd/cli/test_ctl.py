"""p2pctl against an in-process control server: exit codes, tables, JSON, extension."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2pd.cli import ctl
from p2pd.control.server import ControlServer, Param, RpcError, serve_control
from p2pd.errors import NotConnected


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2pctl", dir="/tmp") as d:
        yield Path(d) / "control.sock"


def make_server() -> ControlServer:
    server = ControlServer()
    server.register("status", lambda: {"member_id": "alice", "role": "prosumer", "community": "c",
                                       "uptime_s": 1.5, "sessions": [
                                           {"member_id": "bob", "role": "prosumer", "address": "1.2.3.4:7400",
                                            "initiator": True, "since": None, "messages_in": 3,
                                            "messages_out": 4}],
                                       "counters": {"sessions_established": 1}})

    def disconnect(member_id: str) -> None:
        raise NotConnected(f"no session with {member_id}")

    server.register("peers.disconnect", disconnect, {"member_id": Param(str)})

    def take(order_id: str, wh: int) -> None:
        raise RpcError(-32007, "take refused: the owner's store cannot commit receipts now",
                       {"reason": "STORAGE_UNAVAILABLE", "trade_id": "ab" * 16})

    server.register("orders.take", take, {"order_id": Param(str), "wh": Param(int)})
    server.register("echo", lambda **kw: kw, {"x": Param(int, required=False)})
    return server


async def run_ctl(path: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(ctl.main, ["--socket", str(path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_exit_codes_and_output(nursery: trio.Nursery, sock_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await run_ctl(sock_path, "status", capsys=capsys)
    assert code == ctl.EXIT_NOT_RUNNING and "not running" in err
    await nursery.start(serve_control, make_server(), sock_path)
    code, out, _ = await run_ctl(sock_path, "status", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["member_id"] == "alice"
    code, out, _ = await run_ctl(sock_path, "status", capsys=capsys)
    assert code == 0 and "MEMBER" in out and "bob" in out and "sessions_established=1" in out
    code, _, err = await run_ctl(sock_path, "disconnect", "carol", capsys=capsys)
    assert code == ctl.EXIT_RPC_ERROR and "-32001" in err and "carol" in err
    code, out, _ = await run_ctl(sock_path, "--json", "call", "echo", '{"x": 5}', capsys=capsys)
    assert code == 0 and json.loads(out) == {"x": 5}
    code, _, err = await run_ctl(sock_path, "call", "echo", "{bad", capsys=capsys)
    assert code == ctl.EXIT_USAGE
    code, _, _ = await run_ctl(sock_path, "no-such-command", capsys=capsys)
    assert code == ctl.EXIT_USAGE
    # The protocol reason of a refusal (and the rest of data) is printed after the message.
    code, _, err = await run_ctl(sock_path, "take", "00" * 16, "5", capsys=capsys)
    assert code == ctl.EXIT_RPC_ERROR
    assert err.strip().startswith("p2pctl: error -32007: take refused: the owner's store cannot commit "
                                  "receipts now (reason STORAGE_UNAVAILABLE")


async def test_commands_are_data(nursery: trio.Nursery, sock_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl, "COMMANDS", dict(ctl.COMMANDS))
    ctl.add_command(ctl.Command("double", "echo", "echo x", [ctl.Arg("x", type=int)],
                                lambda a: {"x": a.x * 2}, lambda r: f"x is {r['x']}"))
    with pytest.raises(ValueError):
        ctl.add_command(ctl.Command("double", "echo", "again"))
    await nursery.start(serve_control, make_server(), sock_path)
    code, out, _ = await run_ctl(sock_path, "double", "21", capsys=capsys)
    assert (code, out.strip()) == (0, "x is 42")


def test_table_rendering() -> None:
    text = ctl.table([{"a": "x", "b": None}, {"a": "longer", "b": True}], [("a", "A"), ("b", "B")])
    assert text.splitlines() == ["A       B", "x       -", "longer  yes"]
    assert ctl.table([], [("a", "A")]) == "(none)"


async def test_a_refused_take_shows_the_reason_and_the_trade_id(
        nursery: trio.Nursery, sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 12: p2pctl dropped the error's data, so a timed-out take's trade id
    # (the one to retry with) and the refusal reason never reached the user.
    from p2pd.control.trading import trade_error
    from p2pd.errors import TradeTimeout

    server = ControlServer()

    def take(order_id: str, wh: int) -> None:
        raise trade_error(TradeTimeout("no answer from the order's owner", trade_id=b"\xab" * 16))

    server.register("orders.take", take, {"order_id": Param(str), "wh": Param(int)})
    await nursery.start(serve_control, server, sock_path)
    code, _, err = await run_ctl(sock_path, "take", "00" * 16, "400", capsys=capsys)
    assert code == ctl.EXIT_RPC_ERROR
    assert "-32007" in err and "reason TIMEOUT" in err and f"trade_id {'ab' * 16}" in err
    code, _, err = await run_ctl(sock_path, "take", "00" * 16, "400", "--json", capsys=capsys)
    error = json.loads(err)["error"]
    assert code == ctl.EXIT_RPC_ERROR and error["code"] == -32007
    assert error["data"] == {"reason": "TIMEOUT", "trade_id": "ab" * 16}


async def test_every_error_is_json_with_json(nursery: trio.Nursery, sock_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 15, point 6: with --json, usage errors and "not running" were text.
    code, out, err = await run_ctl(sock_path, "--json", "status", capsys=capsys)
    assert code == ctl.EXIT_NOT_RUNNING and out == ""
    assert json.loads(err)["error"] == {"kind": "not_running", "socket": str(sock_path),
                                        "message": f"p2pd is not running (no daemon at {sock_path})"}
    code, _, err = await run_ctl(sock_path, "take", "00" * 16, "many", "--json", capsys=capsys)
    usage = json.loads(err)["error"]
    assert code == ctl.EXIT_USAGE and usage["kind"] == "usage"
    assert usage["message"] == "argument wh: invalid int value: 'many'"
    assert usage["usage"].startswith("usage: p2pctl take")
    code, _, err = await run_ctl(sock_path, "--json", "call", "echo", "[1", capsys=capsys)
    assert code == ctl.EXIT_USAGE and json.loads(err)["error"]["kind"] == "usage"
    code, _, err = await run_ctl(sock_path, "--json", "no-such-command", capsys=capsys)
    assert code == ctl.EXIT_USAGE and "invalid choice" in json.loads(err)["error"]["message"]
    # Without --json: argparse's usage line, then one line.
    code, _, err = await run_ctl(sock_path, "take", "00" * 16, "many", capsys=capsys)
    assert code == ctl.EXIT_USAGE
    assert err.splitlines()[-1] == "p2pctl: error: argument wh: invalid int value: 'many'"
    # The daemon's error object, as sent, fields and all.
    await nursery.start(serve_control, make_server(), sock_path)
    code, _, err = await run_ctl(sock_path, "--json", "take", "00" * 16, "5", capsys=capsys)
    assert code == ctl.EXIT_RPC_ERROR and json.loads(err) == {"error": {
        "code": -32007, "message": "take refused: the owner's store cannot commit receipts now",
        "data": {"reason": "STORAGE_UNAVAILABLE", "trade_id": "ab" * 16}}}
    code, _, err = await run_ctl(sock_path, "events", "no_such_event", "--json", capsys=capsys)
    assert code == ctl.EXIT_RPC_ERROR and json.loads(err)["error"]["code"] == -32601


def test_slots_and_prices_as_typed() -> None:
    import argparse
    from decimal import Decimal

    from p2pd.cli import ctl_commands as cc

    info = {"now": 1_800_000_100, "slot_seconds": 900, "next_slot": 1_800_000_900,
            "currency": "GBP", "money_scale": 1_000_000, "max_price": 100_000_000,
            "export_price": 47_000, "import_price": 139_000}
    assert cc.slot_spec("next").resolve(info) == 1_800_000_900
    # +2h: the first open slot starting at least two hours from now.
    assert cc.slot_spec("+2h").resolve(info) == 1_800_000_000 + 9 * 900
    assert cc.slot_spec("+1h30m").resolve(info) == 1_800_000_000 + 7 * 900
    assert cc.slot_spec("+1m").resolve(info) == 1_800_000_900  # never a slot whose gate closed
    assert cc.slot_spec("+1d").after == 86_400
    assert cc.slot_spec("2027-01-15T08:15").resolve(info) == 1_800_000_900
    with pytest.raises(argparse.ArgumentTypeError, match="expected next, \\+DURATION"):
        cc.slot_spec("+")
    assert [cc.price_text(u) for u in (90_000, 93_500, 139_000, 1, 2_000_000)] == [
        "0.09", "0.0935", "0.139", "0.000001", "2.00"]
    assert cc.to_units(Decimal("0.139"), info) == 139_000
    assert cc.price_warning("sell", 40_000, info) is not None and cc.price_warning("buy", 90_000, info) is None
    with pytest.raises(argparse.ArgumentTypeError):
        cc.price_arg("-1")
