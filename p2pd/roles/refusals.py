"""The one handler of ``AgentRefused`` (type 70), shared by the roles that wait for it.

A node's broker client (its submissions), representative (its agent takes)
and broker (its proposals) all receive ``AgentRefused``, told apart only by
``ref``. Instead of stacking handlers (where the last registration would
win), each role adds a route; a refusal goes to the first route that claims
it (returns True), and one nobody claims is counted.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import AgentRefused

Route = Callable[[PeerConnection, AgentRefused], Awaitable[bool]]


class Refusals:
    """Routes each received AgentRefused to the role waiting for its ``ref``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.routes: list[Route] = []
        node.handle(AgentRefused, self._on_refused)

    def route(self, route: Route) -> None:
        """Add ``route(conn, msg) -> bool``: True if it was waiting for ``msg.ref``."""
        self.routes.append(route)

    async def _on_refused(self, conn: PeerConnection, msg: AgentRefused) -> None:
        for route in self.routes:
            if await route(conn, msg):
                return
        self.node.counters["refusals_unexpected"] += 1


_BY_NODE: weakref.WeakKeyDictionary[Node, Refusals] = weakref.WeakKeyDictionary()


def refusals_of(node: Node) -> Refusals:
    """The node's one :class:`Refusals` router (made on first use)."""
    router = _BY_NODE.get(node)
    if router is None:
        router = _BY_NODE[node] = Refusals(node)
    return router
