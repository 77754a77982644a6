"""p2pctl commands for trading, records, bans and limits (listed in ``p2pd.cli.ctl.COMMAND_MODULES``).

Each maps to one control method (docs/control-api.md): tables for people by
default, the raw result with ``--json``. Times are accepted as unix seconds
or ISO 8601 (``2027-01-15T12:00``, UTC unless an offset is given) and shown
in UTC. Money is shown in currency units (the API's integers / 1,000,000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

from p2pd.cli.ctl import Arg, Command, add_command, table

SCALE = 1_000_000


def when(text: str) -> int:
    """argparse type: unix seconds or an ISO 8601 date/time (UTC by default)."""
    if text.isdigit():
        return int(text)
    try:
        d = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected unix seconds or an ISO date/time, got {text!r}") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp())


def utc(ts: Any) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%d %H:%M")


def money(units: Any) -> str:
    return f"{int(units) / SCALE:.4f}"


def _now() -> int:
    return int(time.time())


def _maybe(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def render_orders(r: dict[str, Any]) -> str:
    rows = [{**o, "slot": utc(o["slot_start"]), "expires": utc(o["expiry"]),
             "price_kwh": money(o["price"]), "mine": o.get("mine")} for o in r["orders"]]
    return table(rows, [("order_id", "ORDER"), ("member", "MEMBER"), ("side", "SIDE"),
                        ("slot", "SLOT (UTC)"), ("wh", "WH"), ("remaining_wh", "LEFT"),
                        ("price_kwh", "PRICE/KWH"), ("expires", "EXPIRES")])


def render_trades(r: dict[str, Any]) -> str:
    rows = [{**t, "slot": utc(t["slot_start"]), "price_kwh": money(t["price"]),
             "money": money(t["amount"])} for t in r["trades"]]
    return table(rows, [("trade_id", "TRADE"), ("side", "SIDE"), ("counterparty", "WITH"),
                        ("slot", "SLOT (UTC)"), ("wh", "WH"), ("price_kwh", "PRICE/KWH"),
                        ("money", "AMOUNT")])


def render_take(r: dict[str, Any]) -> str:
    return (f"trade {r['trade_id']}: {r['seller']} -> {r['buyer']}, {r['wh']} Wh for slot "
            f"{utc(r['slot_start'])} UTC at {money(r['price'])}/kWh = {money(r['amount'])}")


def render_readings(r: dict[str, Any]) -> str:
    rows = [{**x, "time": utc(x["ts"])} for x in r["readings"]]
    text = table(rows, [("time", "TIME (UTC)"), ("ts", "TS"), ("import_wh", "IMPORT WH"),
                        ("export_wh", "EXPORT WH"), ("power_w", "POWER W")])
    return text + ("\n(truncated)" if r.get("truncated") else "")


def render_statements(r: dict[str, Any]) -> str:
    period = r["period"]
    rows = [{**x, "when": utc(x["slot_start"]) if period == "slot" else x[period],
             **{k: money(x[k]) for k in ("bill", "bill_without_p2p", "saving", "p2p_cost",
                                         "p2p_revenue")}} for x in r["rows"]]
    cur = r.get("currency", "")
    return table(rows, [("when", "SLOT (UTC)" if period == "slot" else period.upper()),
                        ("import_wh", "IMPORT WH"), ("export_wh", "EXPORT WH"),
                        ("p2p_bought_wh", "P2P BOUGHT"), ("p2p_sold_wh", "P2P SOLD"),
                        ("trades", "TRADES"), ("bill", f"BILL {cur}"),
                        ("bill_without_p2p", "WITHOUT P2P"), ("saving", "SAVING")])


def render_bans(r: dict[str, Any]) -> str:
    rows = [{**b, "until_utc": utc(b["until"])} for b in r["bans"]]
    return table(rows, [("member_id", "MEMBER"), ("until_utc", "UNTIL (UTC)"),
                        ("remaining_s", "REMAINING S"), ("count", "BANS")])


def render_limits(r: dict[str, Any]) -> str:
    lines = [f"{k:24} {v:g}" for k, v in r["limits"].items()]
    if r.get("under_load"):
        lines += ["", "under load: strangers' handshakes are being refused"]
    members = [{"member": m, "accepted": s["accepted"], "dropped": s["dropped"],
                "allowance": ", ".join(f"{c}={v:g}/s" for c, v in s["allowance"].items())}
               for m, s in r.get("members", {}).items()]
    if members:
        lines += ["", table(members, [("member", "MEMBER"), ("accepted", "ACCEPTED"),
                                      ("dropped", "DROPPED"), ("allowance", "ALLOWANCE")])]
    return "\n".join(lines)


def render_clearing(c: dict[str, Any] | None) -> str:
    if c is None:
        return "no slot cleared yet"
    return (f"slot {utc(c['slot_start'])} UTC: {c['orders']} orders, {c['volume_wh']} Wh at "
            f"{money(c['price'])}/kWh")


def render_book(r: dict[str, Any]) -> str:
    rows = [{**o, "price_kwh": money(o["price"])} for o in r["orders"]]
    text = table(rows, [("order_id", "ORDER"), ("agent", "AGENT"), ("principal", "FOR"), ("side", "SIDE"),
                        ("wh", "WH"), ("price_kwh", "LIMIT/KWH")])
    return text + "\n" + (render_clearing(r["summary"]) if r["closed"] else "gate still open")


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing (mode 0600).

    The text goes to a temporary file in the same directory, which is
    fsynced and then renamed over ``path`` (atomic on POSIX); the directory
    is fsynced so the rename survives a crash. A process killed part way
    leaves ``path`` as it was (absent, or the old file, whole) and at most a
    ``.NAME.*.tmp`` file beside it. Raises OSError; the temporary file is
    removed then.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ReceiptsExport:
    """``receipts export [--out FILE]``: the bundle to a file (mode 0600) or stdout.

    The file is written all or nothing (:func:`write_atomically`): an
    existing FILE is replaced only by a complete bundle, never truncated.
    """

    def __init__(self) -> None:
        self.out: str | None = None

    def params(self, a: argparse.Namespace) -> dict[str, Any]:
        self.out = a.out
        return _maybe(since=a.since, member=a.member)

    def render(self, bundle: dict[str, Any]) -> str:
        text = json.dumps(bundle, indent=1)
        if self.out is None or self.out == "-":
            return text
        write_atomically(self.out, text + "\n")
        return (f"wrote {len(bundle['receipts'])} receipts and {len(bundle['credentials'])} "
                f"credentials to {self.out}; check it with: p2pd receipts verify {self.out} --issuer KEY")


def read_list(path: str) -> str:
    """argparse type: a revocation list file (raw bytes or hex) as hex."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return bytes.fromhex(data.decode("ascii").strip()).hex()
    except (UnicodeDecodeError, ValueError):
        return data.hex()


_export = ReceiptsExport()
_since = Arg("--since", type=when, help="only from this time (unix or ISO)")
_member = Arg("--member", help="only trades with this member")

for _cmd in (
    Command("orders", "orders.list", "list live orders in the book",
            [Arg("--slot", type=when, help="only this delivery slot (start time)")],
            lambda a: _maybe(slot_start=a.slot), render_orders),
    Command("post", "orders.post", "post an order: post sell|buy SLOT WH PRICE",
            [Arg("side", choices=["sell", "buy"]), Arg("slot", type=when, help="slot start"),
             Arg("wh", type=int), Arg("price", type=int, help="money units per kWh (139000 = 0.139)"),
             Arg("--expiry", type=when, help="default: gate closure")],
            lambda a: _maybe(side=a.side, slot_start=a.slot, wh=a.wh, price=a.price, expiry=a.expiry),
            lambda r: f"posted {r['side']} order {r['order_id']}: {r['wh']} Wh for slot "
                      f"{utc(r['slot_start'])} UTC at {money(r['price'])}/kWh"),
    Command("cancel", "orders.cancel", "cancel an order of ours", [Arg("order_id", metavar="ORDER")],
            lambda a: {"order_id": a.order_id}, lambda r: f"cancelled order {r['order_id']}"),
    Command("take", "orders.take", "take WH of someone's order (trade by hand)",
            [Arg("order_id", metavar="ORDER"), Arg("wh", type=int),
             Arg("--trade-id", help="reuse a trade id to retry safely")],
            lambda a: _maybe(order_id=a.order_id, wh=a.wh, trade_id=a.trade_id), render_take),
    Command("trades", "trades.list", "list our trades", [_since, _member],
            lambda a: _maybe(since=a.since, member=a.member), render_trades),
    Command("receipts", "receipts.export", "export trade receipts as a dispute bundle",
            [Arg("action", choices=["export"]), _since, _member,
             Arg("--out", "-o", help="write the bundle to FILE (default: stdout)")],
            _export.params, _export.render),
    Command("readings", "readings.list", "list stored meter readings (default: the last hour)",
            [Arg("--start", type=when), Arg("--end", type=when)],
            lambda a: {"start": a.start if a.start is not None else (a.end or _now()) - 3600,
                       "end": a.end if a.end is not None else _now() + 1}, render_readings),
    Command("statements", "statements.list", "signed slot statements, or day/month totals",
            [Arg("--period", choices=["slot", "day", "month"], default="day"),
             Arg("--start", type=when), Arg("--end", type=when)],
            lambda a: _maybe(period=a.period, start=a.start, end=a.end), render_statements),
    Command("bans", "bans.list", "list active bans", render=render_bans),
    Command("unban", "bans.clear", "lift a member's ban", [Arg("member_id", metavar="MEMBER")],
            lambda a: {"member_id": a.member_id},
            lambda r: f"lifted the ban on {r['member_id']}" if r["cleared"]
            else f"{r['member_id']} was not banned"),
    Command("limits", "limits.show", "show inbound limits and per-member use", render=render_limits),
    Command("revocations", "revocations.list", "list installed revocation lists",
            render=lambda r: table([{**x, "members": ", ".join(x["members"])} for x in r["lists"]],
                                   [("issuer", "ISSUER"), ("serial", "SERIAL"), ("members", "MEMBERS")])),
    Command("revoke", "revocations.install", "install a signed revocation list FILE",
            [Arg("list_hex", type=read_list, metavar="FILE")], lambda a: {"list_hex": a.list_hex},
            lambda r: (f"installed serial {r['serial']} of {r['issuer'][:16]}...: revoked "
                       f"{', '.join(r['members']) or 'credential ids only'}") if r["installed"]
            else f"not newer than the serial {r['current_serial']} already installed"),
    Command("broker", "broker.status", "the broker's open slots and last clearing",
            render=lambda r: render_clearing(r["last"]) + f"\n{r['slots_cleared']} slots cleared; open: "
            + (", ".join(f"{utc(s['slot_start'])} ({s['orders']} orders)" for s in r["open_slots"]) or "none")),
    Command("book", "broker.book", "a slot's order book at the broker, and its clearing",
            [Arg("slot", type=when, help="slot start")], lambda a: {"slot_start": a.slot}, render_book),
    Command("representative", "representative.status", "a representative's clients and counters",
            render=lambda r: f"{r['scenario']}" + (f" via broker {r['broker']}" if r["broker"] else "")
            + f", {r['receipts']} receipts\n" + table(r["clients"], [
                ("member", "CLIENT"), ("max_wh_per_slot", "MAX WH/SLOT"), ("min_sell_price", "MIN SELL"),
                ("max_buy_price", "MAX BUY"), ("reports", "REPORTS")])),
    Command("client", "client.status", "how this prosumer trades: its representative or broker"),
    Command("log", "receipts.log", "our receipt log's head and the equivocators seen",
            render=lambda r: f"seq {r['seq']} head {r['head'][:16]}..., holding {r['held']} replicas; "
            f"equivocators: {', '.join(r['equivocators']) or 'none'}; forks: {', '.join(r['forks']) or 'none'}; "
            f"following {len(r['following'])} logs"),
    Command("fetch-log", "receipts.fetch_log", "follow a MEMBER's receipt log and fetch what is missing",
            [Arg("member", help="member id")], lambda a: {"member": a.member},
            lambda r: f"{r['member']}: verified up to seq {r['verified']} ({r['fetched']} entries fetched now; "
            f"newest head known {r['latest_head']})" + (" FORK" if r["fork"] else "")
            + (" EQUIVOCATION" if r["equivocation"] else "")),
):
    add_command(_cmd)
