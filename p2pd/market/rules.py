"""The community's trading rules, as one frozen value.

Filled from the ``[community]`` and ``[trading]`` configuration sections
(p2pd/components/); every check of p2pd.market reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

TRADING_ROLES = ("prosumer", "representative")
"""Credential roles that may post orders and trade (a broker never trades)."""


@dataclass(frozen=True)
class MarketRules:
    """Community trading rules (from the [community] and [trading] config)."""

    slot_len: int = 900
    gate_closure: int = 300
    max_ahead: int = 2 * 86400
    hops: int = 15
    """Hops a new order or cancel is gossiped with. 15, not 8: the lazy gossip
    links (p2pd/net/gossip_lazy.py) thin the eager sessions to a tree deeper
    than 8 hops at community scale, and an item that dies on the tree comes
    back to the far nodes through announcements (200 simulated nodes, a day:
    with PRUNE_FLOOR, 18% fewer messages and 11% less CPU than 8 hops
    without it; the busiest hours alone cost more, docs/simulation.md). For
    the daemon, 15 hops carry an order down the tree at once instead of at
    the next announcement round. 15 leaves the pseudonymous stem its one hop
    more (16, the wire's MAX_HOPS)."""
    take_timeout: float = 10.0
    take_attempts: int = 3
    gossip_degree: int = 8
    """Fan-out limit for orders and cancels (p2pd/net/gossip.py)."""
    gossip_interval: float = 0.5
    """Seconds gossip waits in a session's queue to be sent as one GossipBatch."""
    gossip_lazy_interval: float = 300.0
    """Seconds between announcements of ids on lazy gossip links (p2pd/net/gossip_lazy.py);
    0 offers no lazy links: every gossip peer gets every body, as before GossipLink."""
