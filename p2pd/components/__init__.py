"""The daemon's components: one per role, each owning its configuration section.

A component is an object with a ``name`` and ``async def start(ctx)``
(:class:`p2pd.context.Component`). ``start`` runs after the node, store,
discovery and control server exist and before READY=1; it registers its
message handlers, session hooks, control methods and reload hooks, and starts
its tasks in ``ctx.nursery`` (cancelled at shutdown, before sessions close).

:data:`COMPONENTS` is the explicit list the daemon runs, in order: later
components use what earlier ones share in ``ctx.services`` (the agent needs
the market; replication wraps the market's writer before the broker,
representative and client components commit through it; settlement and the
APIs need the store). The credential's role decides which of
broker/representative/client actually trade.

May import: ``context``, ``control``, ``roles``, ``net``, ``market``,
``config``, ``notify`` and the shared modules. Never ``sim`` or ``cli``.
"""

from __future__ import annotations

from p2pd.components.agent import DAEMON_COMPONENT as AGENT
from p2pd.components.broker import DAEMON_COMPONENT as BROKER
from p2pd.components.client import DAEMON_COMPONENT as CLIENT
from p2pd.components.policing import DAEMON_COMPONENT as POLICING
from p2pd.components.replication import DAEMON_COMPONENT as REPLICATION
from p2pd.components.representative import DAEMON_COMPONENT as REPRESENTATIVE
from p2pd.components.revocations import DAEMON_COMPONENT as REVOCATIONS
from p2pd.components.settlement import DAEMON_COMPONENT as SETTLEMENT
from p2pd.components.trading import DAEMON_COMPONENT as TRADING
from p2pd.context import Component

COMPONENTS: tuple[Component, ...] = (
    REVOCATIONS, POLICING, TRADING, REPLICATION, AGENT, BROKER, REPRESENTATIVE, CLIENT, SETTLEMENT,
)
