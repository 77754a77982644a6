"""``p2pd sim --plot FILE.png``: a picture of the simulated day.

matplotlib is an optional extra (``pip install -e '.[plot]'``); without it
the command stops before simulating, with a message saying how to get it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from p2pd.sim.community import SimError


def require_matplotlib() -> None:
    """Raise :class:`SimError` with the install line if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SimError("--plot needs matplotlib: pip install -e '.[plot]' "
                       "(or pip install matplotlib)") from exc


def plot_day(report: dict[str, Any], path: str) -> None:
    """Production, consumption and P2P energy per slot (kWh), and trade prices (GBP/kWh)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["plot_data"]
    slots = sorted(data["production_by_slot"])
    when = [datetime.fromtimestamp(s, timezone.utc) for s in slots]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    top.plot(when, [data["production_by_slot"][s] / 1000 for s in slots], label="PV production")
    top.plot(when, [data["consumption_by_slot"][s] / 1000 for s in slots], label="consumption")
    top.bar(when, [data["traded_by_slot"].get(s, 0) / 1000 for s in slots], width=0.008,
            label="traded peer to peer", color="tab:green")
    top.set_ylabel("kWh per 15 min")
    top.legend()
    for s, prices in data["prices"].items():
        t = datetime.fromtimestamp(int(s), timezone.utc)
        bottom.scatter([t] * len(prices), [p / 1e6 for p in prices], s=8, color="tab:green")
    tariff = report["tariff"]
    bottom.axhline(tariff["retail"] / 1e6, color="tab:red", linestyle="--", label="retail")
    bottom.axhline(tariff["export"] / 1e6, color="tab:blue", linestyle="--", label="export")
    bottom.set_ylabel("GBP/kWh")
    bottom.legend()
    fig.suptitle(f"p2pd sim: {report['nodes']} nodes, seed {report['seed']}, {report['start_utc']} UTC")
    fig.savefig(path, dpi=120)
    plt.close(fig)
