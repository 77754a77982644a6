"""p2pctl commands for trading, records, bans and limits (listed in ``p2pd.cli.ctl.COMMAND_MODULES``).

Each maps to one control method (docs/control-api.md): tables for people by
default, the raw result with ``--json``. Times are accepted as unix seconds
or ISO 8601 (``2027-01-15T12:00``, UTC unless an offset is given) and shown
in UTC; a slot also as ``next`` or ``+2h`` (read against the daemon's clock
and slot length, ``market.info``). Prices are typed and shown in currency
per kWh (``0.09``; the API's integers / 1,000,000), in the daemon's
``[tariffs]`` currency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from p2pd.cli.ctl import Arg, Client, Command, add_command, table
from p2pd.cli.output import UsageError, warning

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


def price_text(units: Any) -> str:
    """A price per kWh as people write it: ``90000`` -> ``"0.09"``, ``93500`` -> ``"0.0935"``."""
    text = f"{Decimal(int(units)) / SCALE:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


# --- slots and prices as people type them (p2pctl post) ---------------------------

RELATIVE = re.compile(r"\+(?:(\d{1,4})d)?(?:(\d{1,5})h)?(?:(\d{1,6})m(?:in)?)?")


@dataclass(frozen=True)
class SlotSpec:
    """A slot as typed: an absolute time (``at``), ``+DURATION`` (``after``) or ``next``."""

    text: str
    at: int | None = None
    after: int | None = None

    def resolve(self, info: dict[str, Any]) -> int:
        """The slot start, from ``market.info``: ``next`` is the first slot still open
        for trading; ``+2h`` the first open slot starting at least 2 h from now."""
        if self.at is not None:
            return self.at
        if self.after is None:
            return int(info["next_slot"])
        slot = int(info["slot_seconds"])
        first = -(-(int(info["now"]) + self.after) // slot) * slot
        return max(first, int(info["next_slot"]))


def slot_spec(text: str) -> SlotSpec:
    """argparse type: ``next``, ``+2h``/``+30m``/``+1d``/``+1h30m``, ISO 8601 or unix seconds."""
    if text == "next":
        return SlotSpec(text)
    m = RELATIVE.fullmatch(text)
    if m and any(m.groups()):
        d, h, mins = (int(g or 0) for g in m.groups())
        return SlotSpec(text, after=((d * 24 + h) * 60 + mins) * 60)
    try:
        return SlotSpec(text, at=when(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected next, +DURATION (+2h, +30m, +1d), an ISO date/time or unix seconds, "
            f"got {text!r}") from None


def price_arg(text: str) -> Decimal:
    """argparse type: a price in currency per kWh, like ``0.09``."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a price in currency per kWh like 0.09, got {text!r}")
    return value


def to_units(price: Decimal, info: dict[str, Any]) -> int:
    """Currency per kWh to the API's money units; UsageError past the unit or the bounds."""
    cur, scale = info["currency"], int(info["money_scale"])
    units = price * scale
    usage = "usage: p2pctl post sell|buy SLOT WH PRICE"
    if units != units.to_integral_value():
        raise UsageError(f"price {price:f} {cur}/kWh: more decimals than the money unit "
                         f"({Decimal(1) / scale} {cur})", usage)
    top = int(info.get("max_price") or 0)
    if units < 1 or (top and units > top):
        raise UsageError(f"price {price:f} {cur}/kWh: must be between {price_text(1)} and "
                         f"{price_text(top)} {cur}/kWh (prices are in {cur} per kWh, e.g. 0.09)", usage)
    return int(units)


def price_warning(side: str, units: int, info: dict[str, Any]) -> str | None:
    """Why a price outside [export tariff, retail price] makes no sense, or None."""
    cur = info["currency"]
    p, low, high = (f"{price_text(v)} {cur}/kWh" for v in (units, info["export_price"], info["import_price"]))
    if side == "sell" and units < info["export_price"]:
        return f"selling at {p} is below the export tariff {low}: exporting to the supplier pays more"
    if side == "sell" and units > info["import_price"]:
        return (f"selling at {p} is above the retail price {high}: buyers pay less at their "
                "supplier, so nobody is likely to take it")
    if side == "buy" and units > info["import_price"]:
        return f"buying at {p} is above the retail price {high}: the supplier sells for less"
    if side == "buy" and units < info["export_price"]:
        return (f"buying at {p} is below the export tariff {low}: sellers get more by exporting, "
                "so nobody is likely to take it")
    return None


def prepare_post(client: Client, a: argparse.Namespace) -> None:
    """Read the market's rules, resolve the slot and the price, warn about the price."""
    info = client.call("market.info")
    a.slot_start = a.slot.resolve(info)
    a.price_units = to_units(a.price, info)
    why = price_warning(a.side, a.price_units, info)
    if why is not None:
        warning("p2pctl", "price_outside_tariffs", why, as_json=bool(a.json), price=a.price_units,
                export_price=info["export_price"], import_price=info["import_price"])


def prepare_orders(client: Client, a: argparse.Namespace) -> None:
    a.slot_start = a.slot.resolve(client.call("market.info")) if a.slot is not None else None


def render_post(r: dict[str, Any]) -> str:
    cur = r.get("currency", "")
    return (f"posted {r['side']} order {r['order_id']}: {r['wh']} Wh for the slot {utc(r['slot_start'])} "
            f"UTC at {price_text(r['price'])} {cur}/kWh, open until {utc(r['expiry'])} UTC")


def _now() -> int:
    return int(time.time())


def _maybe(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _per_kwh(r: dict[str, Any]) -> str:
    return f"{r['currency']}/KWH" if r.get("currency") else "/KWH"


def render_orders(r: dict[str, Any]) -> str:
    rows = [{**o, "slot": utc(o["slot_start"]), "expires": utc(o["expiry"]),
             "price_kwh": price_text(o["price"]), "mine": o.get("mine")} for o in r["orders"]]
    return table(rows, [("order_id", "ORDER"), ("member", "MEMBER"), ("side", "SIDE"),
                        ("slot", "SLOT (UTC)"), ("wh", "WH"), ("remaining_wh", "LEFT"),
                        ("price_kwh", f"PRICE {_per_kwh(r)}"), ("expires", "EXPIRES")])


def render_trades(r: dict[str, Any]) -> str:
    rows = [{**t, "slot": utc(t["slot_start"]), "price_kwh": price_text(t["price"]),
             "money": money(t["amount"])} for t in r["trades"]]
    return table(rows, [("trade_id", "TRADE"), ("side", "SIDE"), ("counterparty", "WITH"),
                        ("slot", "SLOT (UTC)"), ("wh", "WH"), ("price_kwh", f"PRICE {_per_kwh(r)}"),
                        ("money", f"AMOUNT {r.get('currency', '')}".rstrip())])


def render_take(r: dict[str, Any]) -> str:
    cur = r.get("currency", "")
    return (f"trade {r['trade_id']}: {r['seller']} -> {r['buyer']}, {r['wh']} Wh for slot "
            f"{utc(r['slot_start'])} UTC at {price_text(r['price'])} {cur}/kWh = "
            f"{money(r['amount'])} {cur}").rstrip()


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
            [Arg("--slot", type=slot_spec, help="only this delivery slot: next, +2h, ISO or unix")],
            lambda a: _maybe(slot_start=a.slot_start), render_orders, before=prepare_orders),
    Command("post", "orders.post", "post an order: post sell|buy SLOT WH PRICE",
            [Arg("side", choices=["sell", "buy"]),
             Arg("slot", type=slot_spec, metavar="SLOT",
                 help="next (the first slot still open), +DURATION (the first open slot at least "
                      "that far ahead: +2h, +30m, +1d), or its start: ISO 8601 (UTC) or unix seconds"),
             Arg("wh", type=int, metavar="WH", help="energy, Wh"),
             Arg("price", type=price_arg, metavar="PRICE",
                 help="currency per kWh, e.g. 0.09 (the daemon's [tariffs] currency)"),
             Arg("--expiry", type=when, help="default: gate closure")],
            lambda a: _maybe(side=a.side, slot_start=a.slot_start, wh=a.wh, price=a.price_units,
                             expiry=a.expiry),
            render_post, before=prepare_post),
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
