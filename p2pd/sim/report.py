"""The simulation report: energy, bills against the no-P2P baseline, traffic, attacks.

Money comes from :mod:`p2pd.market.settlement` only: for every slot of the
simulated window each member's :class:`~p2pd.market.settlement.SlotEnergy` is read
from its meter at the slot boundaries, the slot's receipts become
:class:`~p2pd.market.settlement.Trade` terms, and :func:`~p2pd.market.settlement.settle_slot`
gives the statements. Money is in settlement units (``PRICE_SCALE`` = 1,000,000
units per pound); energy in Wh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from p2pd.market.settlement import (
    PRICE_SCALE,
    SlotEnergy,
    Tariff,
    Trade,
    TradeLine,
    amount,
    settle_slot,
)
from store import ReceiptRecord

DEFAULT_TARIFF = Tariff()


class Metered(Protocol):
    member_id: str
    kind: str
    pv_kwp: float

    def reading_at(self, t: float) -> Any: ...

    def production_wh(self, start: int, end: int) -> int: ...


@dataclass
class MemberAccount:
    """One member's totals over the window; money in settlement units."""

    member: str
    kind: str
    pv_kwp: float
    import_wh: int = 0
    export_wh: int = 0
    pv_wh: int = 0
    bought_wh: int = 0
    sold_wh: int = 0
    p2p_cost: int = 0
    p2p_revenue: int = 0
    bill_baseline: int = 0
    bill_p2p: int = 0
    saving: int = 0


@dataclass
class Accounts:
    members: list[MemberAccount]
    trades: int
    contracted_wh: int
    delivered_wh: int
    paid_by_buyers: int
    received_by_sellers: int
    prices: dict[int, list[int]]
    """slot -> prices of its trades (for the plot)."""
    traded_by_slot: dict[int, int]
    lines: list[tuple[int, TradeLine]] = field(default_factory=list)
    """(slot, line) of every settled trade, in slot order."""
    slot_rows: list[dict[str, int | str]] = field(default_factory=list)
    """``detail`` only: one row per member and slot (energy, P2P, bills)."""


def settle_window(households: Sequence[Metered], receipts: Sequence[ReceiptRecord], start: int,
                  end: int, slot_len: int, tariff: Tariff = DEFAULT_TARIFF, *, detail: bool = False) -> Accounts:
    """Settle every slot in ``[start, end)``; receipts outside it or with non-members are left out.

    ``detail`` also fills ``slot_rows`` (one per member and slot, PV included: costs a pass
    over the profiles).
    """
    accounts = {h.member_id: MemberAccount(h.member_id, h.kind, h.pv_kwp, pv_wh=h.production_wh(start, end))
                for h in households}
    by_slot: dict[int, list[Trade]] = defaultdict(list)
    for r in receipts:
        if start <= r.slot_start < end and r.seller in accounts and r.buyer in accounts:
            by_slot[r.slot_start].append(Trade(r.trade_id, r.seller.encode(), r.buyer.encode(), r.wh, r.price))
    out = Accounts(list(accounts.values()), 0, 0, 0, 0, 0, {}, {})
    by_id = {h.member_id: h for h in households}
    for slot in range(start, end, slot_len):
        energy = {}
        for h in households:
            a, b = h.reading_at(slot), h.reading_at(slot + slot_len)
            energy[h.member_id.encode()] = SlotEnergy(b.import_wh - a.import_wh, b.export_wh - a.export_wh)
        trades = by_slot.get(slot, [])
        parties = {t.seller for t in trades} | {t.buyer for t in trades}
        statements = {}
        if trades:
            settled = settle_slot(slot, slot_len, trades, {p: energy[p] for p in parties}, tariff,
                                  settled_at=end)
            statements = settled.statements
            out.trades += len(settled.lines)
            out.contracted_wh += sum(ln.contracted_wh for ln in settled.lines)
            out.delivered_wh += sum(ln.delivered_wh for ln in settled.lines)
            out.prices[slot] = [ln.price for ln in settled.lines]
            out.traded_by_slot[slot] = sum(ln.delivered_wh for ln in settled.lines)
            out.lines += [(slot, ln) for ln in sorted(settled.lines, key=lambda ln: ln.trade_id)]
        for key, e in energy.items():
            acct = accounts[key.decode()]
            acct.import_wh += e.import_wh
            acct.export_wh += e.export_wh
            st = statements.get(key)
            if detail:
                out.slot_rows.append(_slot_row(slot, slot_len, acct, e, st, tariff,
                                               by_id[acct.member].production_wh(slot, slot + slot_len)))
            if st is None:  # no trades: the bill is the supplier's, as without P2P
                base = amount(e.import_wh, tariff.import_price) - amount(e.export_wh, tariff.export_price)
                acct.bill_baseline += base
                acct.bill_p2p += base
                continue
            acct.bought_wh += st.p2p_bought_wh
            acct.sold_wh += st.p2p_sold_wh
            acct.p2p_cost += st.p2p_cost
            acct.p2p_revenue += st.p2p_revenue
            acct.bill_baseline += st.bill_without_p2p
            acct.bill_p2p += st.bill
            out.paid_by_buyers += st.p2p_cost
            out.received_by_sellers += st.p2p_revenue
    for acct in out.members:
        acct.saving = acct.bill_baseline - acct.bill_p2p
    return out


def _slot_row(slot: int, slot_len: int, acct: MemberAccount, e: SlotEnergy, st: Any, tariff: Tariff,
              pv_wh: int) -> dict[str, int | str]:
    base = amount(e.import_wh, tariff.import_price) - amount(e.export_wh, tariff.export_price)
    return {"member": acct.member, "slot_start": slot, "import_wh": e.import_wh, "export_wh": e.export_wh,
            "pv_wh": pv_wh, "load_wh": pv_wh + e.import_wh - e.export_wh,
            "bought_wh": st.p2p_bought_wh if st else 0, "sold_wh": st.p2p_sold_wh if st else 0,
            "bill_baseline": st.bill_without_p2p if st else base, "bill_p2p": st.bill if st else base}


def matchable_wh(households: Sequence[Metered], start: int, end: int, slot_len: int, min_wh: int) -> int:
    """The most energy the community could trade in ``[start, end)``.

    Per slot, min(total surplus, total need) over the members whose net energy
    is at least ``min_wh`` either way (what an agent trades), from the same
    profiles the agents forecast with: an upper bound that ignores prices and
    who can reach whom.
    """
    total = 0
    for s in range(start, end, slot_len):
        surplus = need = 0
        for h in households:
            a, b = h.reading_at(s), h.reading_at(s + slot_len)
            net = (b.export_wh - a.export_wh) - (b.import_wh - a.import_wh)
            if net >= min_wh:
                surplus += net
            elif -net >= min_wh:
                need += -net
        total += min(surplus, need)
    return total


def matrix(acc: Accounts) -> dict[str, dict[str, dict[str, int]]]:
    """Who traded with whom: seller -> buyer -> delivered ``wh``, ``money`` (settlement units), ``trades``."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for _slot, ln in acc.lines:
        cell = out.setdefault(ln.seller.decode(), {}).setdefault(
            ln.buyer.decode(), {"wh": 0, "money": 0, "trades": 0})
        cell["wh"] += ln.delivered_wh
        cell["money"] += ln.amount
        cell["trades"] += 1
    return out


def fidelity(traded_wh: int, matchable: int) -> dict[str, Any]:
    """Traded against matchable energy, the measure of a run's fidelity."""
    return {"traded_wh": traded_wh, "matchable_wh": matchable,
            "share": round(traded_wh / matchable, 4) if matchable else None}


def summary(acc: Accounts, *, tariff: Tariff = DEFAULT_TARIFF) -> dict[str, Any]:
    """The JSON-ready energy and money part of the report."""
    pv = sum(m.pv_wh for m in acc.members)
    exported = sum(m.export_wh for m in acc.members)
    own_use = pv - exported
    return {
        "energy_traded_wh": acc.delivered_wh,
        "energy_contracted_wh": acc.contracted_wh,
        "trades": acc.trades,
        "pv_production_wh": pv,
        "consumption_wh": sum(m.import_wh for m in acc.members) + own_use,
        "grid_import_wh": sum(m.import_wh for m in acc.members),
        "grid_export_wh": exported,
        "self_consumption_individual": round(own_use / pv, 4) if pv else None,
        "self_consumption_community": round((own_use + acc.delivered_wh) / pv, 4) if pv else None,
        "money_units_per_currency_unit": PRICE_SCALE,
        "tariff": {"retail": tariff.import_price, "export": tariff.export_price,
                   "currency": tariff.currency},
        "paid_by_buyers": acc.paid_by_buyers,
        "received_by_sellers": acc.received_by_sellers,
        "total_saving": sum(m.saving for m in acc.members),
        "members": [asdict(m) for m in acc.members],
        "matrix": matrix(acc),
    }


def _money(units: int) -> str:
    sign = "-" if units < 0 else ""
    return f"{sign}£{abs(units) / PRICE_SCALE:.4f}"


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    r = report
    lines = [
        f"p2pd sim: scenario {r['scenario']}, {r['nodes']} nodes, {r['hours']:g} h from "
        f"{r['start_utc']} UTC, seed {r['seed']}, {r['transport']}, store {r['store']}"
        + (f", profiles {r['profiles']}" if r.get("profiles") else "")
        + (f" (after a {r['warmup_min']} min warm-up, not counted)" if r.get("warmup_min") else ""),
        f"  wall time {r['wall_s']:.1f} s (setup {r['setup_s']:.1f} s), CPU {r['cpu_s']:.1f} s, peak RSS "
        f"{r['peak_rss_bytes'] / 2**20:.0f} MiB, " + _time_line(r),
    ]
    if r.get("stopped"):
        lines.append(f"  STOPPED at {r['end_utc']} UTC: {r['stopped']}")
    f = r.get("fidelity") or {}
    if f:
        share = f"{100 * f['share']:.1f}%" if f["share"] is not None else "n/a"
        lines.append(f"  fidelity: traded {f['traded_wh'] / 1000:.1f} of {f['matchable_wh'] / 1000:.1f} kWh "
                     f"matchable ({share})" + ("" if r["time"] == "virtual" else _pace_line(r.get("pace"))))
        m = f.get("markets")
        if m:
            inside = f"{100 * m['share']:.1f}%" if m["share"] is not None else "n/a"
            lines.append(f"  {m['count']} neighbourhood markets of about {m['size']}: together they could "
                         f"match {m['matchable_wh'] / 1000:.1f} kWh; traded {inside} of that")
    lines += [
        "",
        "Energy",
        f"  PV production      {r['pv_production_wh'] / 1000:10.1f} kWh",
        f"  consumption        {r['consumption_wh'] / 1000:10.1f} kWh",
        f"  traded peer-to-peer{r['energy_traded_wh'] / 1000:10.1f} kWh in {r['trades']} trades"
        f" ({r['energy_contracted_wh'] / 1000:.1f} kWh contracted)",
        f"  grid import/export {r['grid_import_wh'] / 1000:10.1f} / {r['grid_export_wh'] / 1000:.1f} kWh",
    ]
    if r["self_consumption_individual"] is not None:
        lines.append(f"  self-consumption   {100 * r['self_consumption_individual']:9.1f} % alone, "
                     f"{100 * r['self_consumption_community']:.1f} % as a community")
    t = r["tariff"]
    lines += [
        "",
        f"Bills (retail {t['retail'] / PRICE_SCALE:.3f}, export {t['export'] / PRICE_SCALE:.3f}"
        f" {t['currency']}/kWh; negative = income)",
        f"  {'member':8} {'kind':8} {'kWp':>4} {'import':>8} {'export':>8} {'bought':>7} {'sold':>7}"
        f" {'no P2P':>10} {'with P2P':>10} {'saving':>9}",
    ]
    for m in r["members"][:40]:
        lines.append(
            f"  {m['member']:8} {m['kind']:8} {m['pv_kwp']:4.1f} {m['import_wh'] / 1000:8.2f}"
            f" {m['export_wh'] / 1000:8.2f} {m['bought_wh'] / 1000:7.2f} {m['sold_wh'] / 1000:7.2f}"
            f" {_money(m['bill_baseline']):>10} {_money(m['bill_p2p']):>10} {_money(m['saving']):>9}")
    if len(r["members"]) > 40:
        lines.append(f"  ... {len(r['members']) - 40} more (see --json)")
    savings = [m["saving"] for m in r["members"]]
    lines += [
        f"  total saving {_money(sum(savings))}; lowest {_money(min(savings))}; "
        f"buyers paid {_money(r['paid_by_buyers'])}, sellers received {_money(r['received_by_sellers'])}",
        "",
        "Network",
        f"  {r['messages']} messages ({r['messages_per_s']:.0f}/s), {r['handshakes']} handshakes "
        f"({r['handshakes_per_s']:.1f}/s), {r['handshake_failures']} failed",
        f"  congestion feedback sent {r['congestion']['feedback_sent']}, messages policed "
        f"{r['congestion']['policed']}, bans {r['congestion']['bans']}",
    ]
    lines += _render_matrix(r)
    if r.get("log_events"):
        lines.append("  node log lines: " + ", ".join(f"{k} {v}" for k, v in r["log_events"].items()))
    lines += render_roles(r.get("roles") or {})
    if r["attacks"]:
        lines += ["", "Attacks (for the mitigations to hold: successes 0)"]
        for name, a in r["attacks"].items():
            if "unavailable" in a:
                lines.append(f"  {name:16} unavailable: {a['unavailable']}")
                continue
            lines.append(f"  {name:16} attempts {a['attempts']:5}  successes {a['successes']:4}")
            extra = {k: v for k, v in a.items() if k not in ("attempts", "successes", "note")}
            if extra:
                lines.append(f"  {'':16} " + "; ".join(f"{_words(k)}: {_plain(v)}" for k, v in extra.items()))
            if a.get("note"):
                lines.append(f"  {'':16} {a['note']}")
    return "\n".join(lines)


def _words(key: str) -> str:
    return key.replace("_", " ")


def _plain(value: Any) -> str:
    """A value of an attack's outcome as words: ``{'expired': 0}`` -> ``expired 0``."""
    if isinstance(value, dict):
        return ", ".join(f"{_words(str(k))} {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _time_line(r: dict[str, Any]) -> str:
    if r["time"] == "virtual":
        return "virtual time"
    workers = f", {r['workers']} worker processes" if r.get("workers") else ""
    return f"wall clock x{r['time_scale']:g}{workers}"


def _pace_line(pace: dict[str, Any] | None) -> str:
    if not pace:
        return ""
    slowed = (f"; slowed to x{pace['final_scale']:g} ({len(pace['changes'])} steps)"
              if pace["changes"] else "; kept its pace")
    return (f"{slowed}; nodes late by {pace['lag_p90_s']:.0f} s (simulated, 90th percentile), "
            f"{pace['take_timeouts']} of {pace['takes']} takes timed out")


def _render_matrix(r: dict[str, Any], top: int = 5) -> list[str]:
    cells = [(c["wh"], s, b, c) for s, row in r.get("matrix", {}).items() for b, c in row.items()]
    if not cells:
        return []
    cells.sort(key=lambda x: (-x[0], x[1], x[2]))
    lines = ["", f"Who traded with whom ({len(cells)} seller-buyer pairs; all in --json 'matrix', --csv, --plot)"]
    for wh, s, b, c in cells[:top]:
        lines.append(f"  {s:>8} -> {b:<8} {wh / 1000:7.2f} kWh {_money(c['money']):>10} in {c['trades']} trades")
    return lines


def render_roles(roles: dict[str, Any]) -> list[str]:
    """S2-S4: the broker's, the representatives' and the brokered members' figures."""
    if not roles:
        return []
    lines = ["", "Roles"]
    b = roles.get("broker")
    if b:
        lines.append(f"  broker: {b['slots_cleared']} slots cleared, {b['orders']} orders, "
                     f"{b['volume_wh'] / 1000:.1f} kWh matched, {b['matches_final']} receipts, "
                     f"{b['matches_failed']} matches failed")
    for name, rep in (roles.get("representatives") or {}).items():
        lines.append(f"  {name}: {rep['clients']} clients, {rep['reports']} reports, netted "
                     f"{rep['netted_wh'] / 1000:.1f} kWh among its clients, offered {rep['offered_wh'] / 1000:.1f}, "
                     f"bought {rep['bought_wh'] / 1000:.1f}, submitted {rep['submitted_wh'] / 1000:.1f}, "
                     f"filled {rep['filled_wh'] / 1000:.1f} kWh")
    c = roles.get("brokered")
    if c:
        lines.append(f"  members: {c.get('slots_broker', 0)} slots placed with the broker, "
                     f"{c.get('slots_direct', 0)} over S1, {c.get('broker_wh', 0) / 2000:.1f} kWh in broker receipts")
    logs = roles.get("receipt_logs")
    if logs:
        lines.append(f"  receipt logs: {logs['entries']} entries, {logs['replicas_held']} replicas held, "
                     f"equivocations detected {logs['equivocations_detected']}, forks {logs['forks_detected']}")
    return lines
