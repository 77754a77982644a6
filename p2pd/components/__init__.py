"""The daemon's components: one per role, each owning its configuration section.

A component is an object with a ``name``, a ``section`` and ``async def
start(ctx)`` (:class:`p2pd.context.Component`). ``section`` is the
:class:`p2pd.config.Section` it owns (``[trading]`` for the trading
component, ``[limits]`` for policing, ...; None for the agent, which reads
``[trading]``), defined in the component's module next to its code.
``start`` runs after the node, store, discovery and control server exist and
before READY=1; it registers its message handlers, session hooks, control
methods and reload hooks, and starts its tasks in ``ctx.nursery`` (cancelled
at shutdown, before sessions close).

:data:`COMPONENTS` is the explicit list the daemon runs, in order: later
components use what earlier ones share in ``ctx.services`` (the agent needs
the market; replication wraps the market's writer before the broker,
representative and client components commit through it; settlement and the
APIs need the store). The credential's role decides which of
broker/representative/client actually trade.

:data:`SECTIONS` are the sections of :data:`COMPONENTS`: what a configuration
file may hold besides the core sections. Every way in passes them to the
loader, so all validate alike: ``p2pd config check``, ``p2pd run``, ``p2pd
meter read --config``, and reload (SIGHUP, ``p2pctl reload``), which uses
the running components' sections (:attr:`p2pd.context.DaemonContext.sections`).

May import: ``views``, ``context``, ``control``, ``roles``, ``net``,
``market``, ``config``, ``notify`` and the shared modules. Never ``sim`` or ``cli``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from p2pd.components.agent import DAEMON_COMPONENT as AGENT
from p2pd.components.broker import DAEMON_COMPONENT as BROKER
from p2pd.components.client import DAEMON_COMPONENT as CLIENT
from p2pd.components.dashboard import DAEMON_COMPONENT as DASHBOARD
from p2pd.components.mqtt import DAEMON_COMPONENT as MQTT
from p2pd.components.policing import DAEMON_COMPONENT as POLICING
from p2pd.components.replication import DAEMON_COMPONENT as REPLICATION
from p2pd.components.representative import DAEMON_COMPONENT as REPRESENTATIVE
from p2pd.components.revocations import DAEMON_COMPONENT as REVOCATIONS
from p2pd.components.settlement import DAEMON_COMPONENT as SETTLEMENT
from p2pd.components.trading import DAEMON_COMPONENT as TRADING
from p2pd.config import Section
from p2pd.context import Component

COMPONENTS: tuple[Component, ...] = (
    REVOCATIONS, POLICING, TRADING, REPLICATION, AGENT, BROKER, REPRESENTATIVE, CLIENT, SETTLEMENT,
    MQTT, DASHBOARD,
)


def sections_of(components: Iterable[Component]) -> tuple[Section[Any], ...]:
    """The configuration sections ``components`` own, in their order."""
    return tuple(c.section for c in components if c.section is not None)


SECTIONS: tuple[Section[Any], ...] = sections_of(COMPONENTS)
