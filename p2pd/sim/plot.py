"""``p2pd sim --plot FILE``: a picture of the run and of who traded with whom.

matplotlib is an optional extra (``pip install -e '.[plot]'``); without it,
or with a path that cannot be written or a format matplotlib does not know,
the command stops before simulating, with a one-line message.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from p2pd.sim.community import SimError

MATRIX_LABELS = 40
"""Communities up to this size get every member's name on the matrix's axes."""


def require_matplotlib() -> None:
    """Raise :class:`SimError` with the install line if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SimError("--plot needs matplotlib: pip install -e '.[plot]' "
                       "(or pip install matplotlib)") from exc


def check_plot_path(path: str) -> None:
    """Raise :class:`SimError` unless a plot can be saved at ``path`` (checked before the run)."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in formats:
        raise SimError(f"--plot {path}: unknown format {ext or '(no extension)'!r}; use one of "
                       f"{', '.join('.' + f for f in sorted(formats))}")
    if os.path.isdir(path):
        raise SimError(f"--plot {path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SimError(f"--plot {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise SimError(f"--plot {path}: not writable")


def plot_run(report: dict[str, Any], path: str) -> None:
    """Left: production, consumption and P2P energy per slot (kWh), trade prices (GBP/kWh).
    Right: the member-by-member matrix of energy sold (rows sellers, columns buyers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["plot_data"]
    slots = sorted(data["production_by_slot"])
    when = [datetime.fromtimestamp(s, timezone.utc) for s in slots]
    fig = plt.figure(figsize=(16, 7))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.7, 1))
    top: Any = fig.add_subplot(grid[0, 0])  # Any: matplotlib's stubs refuse datetimes for x
    bottom: Any = fig.add_subplot(grid[1, 0], sharex=top)
    width = max(0.008, 0.6 * (slots[1] - slots[0]) / 86400) if len(slots) > 1 else 0.008
    top.plot(when, [data["production_by_slot"][s] / 1000 for s in slots], label="PV production")
    top.plot(when, [data["consumption_by_slot"][s] / 1000 for s in slots], label="consumption")
    top.bar(when, [data["traded_by_slot"].get(s, 0) / 1000 for s in slots], width=width,
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
    fig.autofmt_xdate()
    _matrix(fig.add_subplot(grid[:, 1]), report)
    f = report.get("fidelity") or {}
    share = f" ({100 * f['share']:.0f}% of matchable)" if f.get("share") is not None else ""
    fig.suptitle(f"p2pd sim: {report['nodes']} nodes, seed {report['seed']}, {report['start_utc']} to "
                 f"{report.get('end_utc', '')} UTC, {report['energy_traded_wh'] / 1000:.1f} kWh traded{share}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _matrix(ax: Any, report: dict[str, Any]) -> None:
    members = [m["member"] for m in report["members"]]
    index = {m: i for i, m in enumerate(members)}
    cells = [[0.0] * len(members) for _ in members]
    for seller, row in report["matrix"].items():
        for buyer, cell in row.items():
            cells[index[seller]][index[buyer]] = cell["wh"] / 1000
    image = ax.imshow(cells, cmap="Greens", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="kWh sold", shrink=0.8)
    ax.set_title("who sold to whom")
    ax.set_ylabel("seller")
    ax.set_xlabel("buyer")
    if len(members) <= MATRIX_LABELS:
        ax.set_xticks(range(len(members)), members, rotation=90, fontsize=7)
        ax.set_yticks(range(len(members)), members, fontsize=7)
