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
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from p2pd.market.settlement import PRICE_SCALE, SlotEnergy, Tariff, Trade, amount, settle_slot
from store import ReceiptRecord


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


def settle_window(households: Sequence[Metered], receipts: Sequence[ReceiptRecord], start: int,
                  end: int, slot_len: int, tariff: Tariff = Tariff()) -> Accounts:
    """Settle every slot in ``[start, end)``; receipts outside it or with non-members are left out."""
    accounts = {h.member_id: MemberAccount(h.member_id, h.kind, h.pv_kwp, pv_wh=h.production_wh(start, end))
                for h in households}
    by_slot: dict[int, list[Trade]] = defaultdict(list)
    for r in receipts:
        if start <= r.slot_start < end and r.seller in accounts and r.buyer in accounts:
            by_slot[r.slot_start].append(Trade(r.trade_id, r.seller.encode(), r.buyer.encode(), r.wh, r.price))
    out = Accounts(list(accounts.values()), 0, 0, 0, 0, 0, {}, {})
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
        for key, e in energy.items():
            acct = accounts[key.decode()]
            acct.import_wh += e.import_wh
            acct.export_wh += e.export_wh
            st = statements.get(key)
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


def summary(acc: Accounts, *, tariff: Tariff = Tariff()) -> dict[str, Any]:
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
    }


def _money(units: int) -> str:
    sign = "-" if units < 0 else ""
    return f"{sign}£{abs(units) / PRICE_SCALE:.4f}"


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    r = report
    lines = [
        f"p2pd sim: scenario {r['scenario']}, {r['nodes']} nodes, {r['hours']} h from "
        f"{r['start_utc']}, seed {r['seed']}, {r['transport']}, store {r['store']}",
        f"  wall time {r['wall_s']:.1f} s (setup {r['setup_s']:.1f} s), CPU {r['cpu_s']:.1f} s, peak RSS "
        f"{r['peak_rss_bytes'] / 2**20:.0f} MiB, "
        + ("virtual time" if r["time"] == "virtual" else f"wall clock x{r['time_scale']:g}"),
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
    lines += render_roles(r.get("roles") or {})
    if r["attacks"]:
        lines += ["", "Attacks (for the mitigations to hold: successes 0)"]
        for name, a in r["attacks"].items():
            if "unavailable" in a:
                lines.append(f"  {name:16} unavailable: {a['unavailable']}")
                continue
            extra = {k: v for k, v in a.items() if k not in ("attempts", "successes", "note")}
            lines.append(f"  {name:16} attempts {a['attempts']:5}  successes {a['successes']:4}  "
                         + " ".join(f"{k}={v}" for k, v in extra.items()))
            if a.get("note"):
                lines.append(f"  {'':16} {a['note']}")
    return "\n".join(lines)


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
