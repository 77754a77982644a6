"""``p2pd sim --csv DIR``: the run as CSV files, for a spreadsheet or pandas.

* ``trades.csv``: one row per settled trade: slot (unix s and UTC), trade
  id, seller, buyer, contracted and delivered Wh, price and amount (settlement
  units: 1,000,000 per currency unit, per kWh for the price);
* ``energy.csv``: one row per member and slot: import, export, PV, load,
  bought and sold Wh, the slot's bill without and with P2P;
* ``bills.csv``: one row per member: the report's totals;
* ``matrix.csv``: one row per seller and buyer who traded: Wh, amount, trades.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from typing import Any

from p2pd.sim.community import SimError
from p2pd.sim.report import Accounts

FILES = ("trades.csv", "energy.csv", "bills.csv", "matrix.csv")


def check_csv_dir(path: str) -> None:
    """Create ``path`` if needed; raise :class:`SimError` unless its files can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SimError(f"--csv {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise SimError(f"--csv {path}: not writable")
    for name in FILES:
        target = os.path.join(path, name)
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise SimError(f"--csv {target}: not writable")


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_tables(path: str, report: dict[str, Any], accounts: Accounts) -> list[str]:
    """Write the four files; returns their paths. Raises OSError."""
    out = []

    def table(name: str, header: list[str], rows: Any) -> None:
        target = os.path.join(path, name)
        with open(target, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        out.append(target)

    table("trades.csv", ["slot_start", "slot_utc", "trade_id", "seller", "buyer", "contracted_wh",
                         "delivered_wh", "price", "amount"],
          ([slot, _utc(slot), ln.trade_id.hex(), ln.seller.decode(), ln.buyer.decode(), ln.contracted_wh,
            ln.delivered_wh, ln.price, ln.amount] for slot, ln in accounts.lines))
    energy_cols = ["import_wh", "export_wh", "pv_wh", "load_wh", "bought_wh", "sold_wh", "bill_baseline",
                   "bill_p2p"]
    table("energy.csv", ["member", "slot_start", "slot_utc", *energy_cols],
          ([r["member"], r["slot_start"], _utc(int(r["slot_start"])), *(r[c] for c in energy_cols)]
           for r in accounts.slot_rows))
    bill_cols = ["member", "kind", "pv_kwp", "import_wh", "export_wh", "pv_wh", "bought_wh", "sold_wh",
                 "p2p_cost", "p2p_revenue", "bill_baseline", "bill_p2p", "saving"]
    table("bills.csv", bill_cols, ([m[c] for c in bill_cols] for m in report["members"]))
    table("matrix.csv", ["seller", "buyer", "wh", "amount", "trades"],
          ([s, b, c["wh"], c["money"], c["trades"]] for s, row in sorted(report["matrix"].items())
           for b, c in sorted(row.items())))
    return out
