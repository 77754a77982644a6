"""The household's dashboard page: one HTML document with an inline SVG chart.

Rendered on the server from :class:`~p2pd.views.summary.Household` and the
day chart: no script, no external resource (the page's Content-Security-Policy
forbids both), so it works offline, in any browser, and reloads itself every
``refresh`` seconds. Every value from the node is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape

from p2pd.views.summary import HourBar, Household, Totals

CHART_W, CHART_H, CHART_PAD = 720, 220, 36
COLOURS = {"import": "#d9534f", "export": "#5cb85c", "traded": "#337ab7"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f7f7f5;color:#222}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:0 0 .6rem}
.sub{color:#666;margin-bottom:1rem}.grid{display:grid;gap:1rem;
grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
section{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:1.6rem;font-weight:600}.ok{color:#2e7d32}.bad{color:#c62828}
.mine{background:#fff8e1}.legend span{display:inline-block;margin-right:1rem}
.sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"""


def _t(ts: float | None, fmt: str = "%H:%M") -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime(fmt)


def _kwh(wh: int | None) -> str:
    return "-" if wh is None else f"{wh / 1000:,.3f} kWh"


def _money(units: int | None, h: Household) -> str:
    return "-" if units is None else f"{units / h.money_scale:,.2f} {escape(h.currency)}"


def _price(units: int | None, h: Household) -> str:
    return "-" if units is None else f"{units / h.money_scale:.4f} {escape(h.currency)}/kWh"


def _rows(rows: Iterable[Sequence[str]], cls: Sequence[str] = ()) -> str:
    out = []
    for row in rows:
        attrs = [f' class="{c}"' if c else "" for c in (list(cls) + [""] * len(row))[:len(row)]]
        out.append("<tr>" + "".join(f"<td{a}>{cell}</td>" for a, cell in zip(attrs, row,
                                                                             strict=True)) + "</tr>")
    return "".join(out)


def _totals(title: str, t: Totals, h: Household) -> str:
    return f"""<section><h2>{escape(title)}</h2>
<div class="big" id="{escape(title.split()[0].lower())}-saving">{_money(t.saving, h)} saved</div>
<div class="sub">against the supplier-only bill, {t.settled_slots} settled slots</div>
<table>{_rows([("Bought from peers", _kwh(t.bought_wh), _money(t.cost, h)),
               ("Sold to peers", _kwh(t.sold_wh), _money(t.revenue, h)),
               ("Trades", str(t.trades), ""),
               ("Bill with peer-to-peer", "", _money(t.bill, h)),
               ("Supplier-only bill", "", _money(t.bill_without_p2p, h))], ("", "n", "n"))}</table>
</section>"""


def chart_svg(bars: Sequence[HourBar]) -> str:
    """Import, export and traded Wh per hour, as grouped bars."""
    top = max([1] + [max(b.import_wh, b.export_wh, b.bought_wh + b.sold_wh) for b in bars])
    inner_w, inner_h = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD
    group = inner_w / max(1, len(bars))
    width = group / 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="day-chart" viewBox="0 0 {CHART_W} {CHART_H}"'
             f' width="100%" role="img" aria-label="Import, export and traded energy per hour">',
             f'<line x1="{CHART_PAD}" y1="{CHART_H - CHART_PAD}" x2="{CHART_W - CHART_PAD}"'
             f' y2="{CHART_H - CHART_PAD}" stroke="#999"/>',
             f'<text x="{CHART_PAD}" y="{CHART_PAD - 8}" font-size="11">{top / 1000:.3f} kWh</text>']
    for i, b in enumerate(bars):
        x0 = CHART_PAD + i * group + width / 2
        for j, (kind, wh) in enumerate((("import", b.import_wh), ("export", b.export_wh),
                                        ("traded", b.bought_wh + b.sold_wh))):
            height = inner_h * wh / top
            parts.append(f'<rect class="{kind}" x="{x0 + j * width:.1f}" '
                         f'y="{CHART_H - CHART_PAD - height:.1f}" width="{width:.1f}" '
                         f'height="{height:.1f}" fill="{COLOURS[kind]}"><title>{b.hour:02d}:00 '
                         f'{kind} {wh} Wh</title></rect>')
        if b.hour % 3 == 0:
            parts.append(f'<text x="{x0:.1f}" y="{CHART_H - CHART_PAD + 14}" font-size="11">'
                         f'{b.hour:02d}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(h: Household, bars: Sequence[HourBar], *, refresh: int) -> str:
    """The whole page."""
    slot = h.slot
    store = '<span class="ok">ok</span>' if h.store_ok else '<span class="bad">refusing writes</span>'
    book = _rows(([escape(o["side"]), escape(o["member"]) + (" (us)" if o["mine"] else ""),
                   _kwh(o["remaining_wh"]), _price(o["price"], h)] for o in h.book),
                 ("", "", "n", "n")) or '<tr><td colspan="4">no live orders</td></tr>'
    peers = _rows(([escape(p.member_id), escape(p.role or "-"), escape(p.address),
                    "out" if p.initiator else "in", _t(p.since), str(p.messages_in),
                    str(p.messages_out)] for p in h.peers),
                  ("", "", "", "", "", "n", "n")) or '<tr><td colspan="7">no sessions</td></tr>'
    targets = _rows([escape(str(t["address"])), escape(str(t["member_id"] or "?")),
                     "connected" if t["connected"] else (
                         f"retry in {t['retry_in_s']:g} s" if t["retry_in_s"] else "dialling"),
                     escape(str(t["last_error"] or ""))] for t in h.targets)
    trades = _rows(([_t(t.slot_start), escape(t.side), escape(t.counterparty), _kwh(t.wh),
                     _price(t.price, h), _money(t.amount, h)] for t in reversed(h.trades_today)),
                   ("", "", "", "n", "n", "n")) or '<tr><td colspan="6">no trades today</td></tr>'
    m = h.meter
    if m is None:
        meter = "<p>No meter configured.</p>"
    else:
        cls = "ok" if m.healthy else "bad"
        meter = f"""<p>{escape(m.driver)}: <span class="{cls}" id="meter-state">{escape(m.state)}</span>
{f"after {m.attempt} failed reads" if m.attempt else ""}</p>
<table>{_rows([("Last reading", _t(m.reading_ts, "%Y-%m-%d %H:%M:%S UTC")),
               ("Import register", _kwh(m.import_wh)), ("Export register", _kwh(m.export_wh)),
               ("Power", "-" if m.power_w is None else f"{m.power_w} W"),
               ("Last error", escape(m.last_error or "-"))], ("", "n"))}</table>"""
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{k}</span>'
                     for k, c in COLOURS.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>p2pd: {escape(h.member_id)}</title><style>{STYLE}</style></head>
<body>
<h1>p2pd: {escape(h.member_id)}</h1>
<div class="sub">community {escape(h.community)}, {escape(h.role)}; {_t(h.now, "%Y-%m-%d %H:%M UTC")};
store {store}; tariff: buy {_price(h.tariff_import, h)}, sell {_price(h.tariff_export, h)}</div>
<div class="grid">
{_totals("Today", h.today, h)}
{_totals("This month", h.month, h)}
<section><h2>Trading slot {_t(slot.slot_start)} UTC</h2>
<p>Our offer: <b id="our-offer">{_kwh(slot.offer_wh)}</b> at {_price(slot.offer_price, h)}<br>
Our bid: <b id="our-bid">{_kwh(slot.bid_wh)}</b> at {_price(slot.bid_price, h)}</p>
<table><tr><th>side</th><th>member</th><th class="n">left</th><th class="n">price</th></tr>{book}</table>
</section>
<section><h2>Meter</h2>{meter}</section>
</div>
<section style="margin-top:1rem"><h2>Today, per hour (UTC)</h2>
<div class="legend">{legend}</div>{chart_svg(bars)}</section>
<div class="grid" style="margin-top:1rem">
<section><h2>Today's trades</h2><table id="trades"><tr><th>slot</th><th>side</th><th>with</th>
<th class="n">energy</th><th class="n">price</th><th class="n">amount</th></tr>{trades}</table></section>
<section><h2>Peers</h2><table id="peers"><tr><th>member</th><th>role</th><th>address</th><th>dir</th>
<th>since</th><th class="n">in</th><th class="n">out</th></tr>{peers}</table>
{f"<h2 style='margin-top:1rem'>Addresses we dial</h2><table>{targets}</table>" if targets else ""}
</section>
</div>
</body></html>
"""
