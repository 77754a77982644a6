from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
from p2pd_test_helpers import NOW, Community, Identity, node_identity

from p2pd.clock import TrioWallClock
from p2pd.net.node import Node, NodeLimits


@pytest.fixture
def community() -> Community:
    return Community()


@pytest.fixture
def make_node(community: Community, nursery: trio.Nursery) -> Callable[..., Awaitable[Node]]:
    """``await make_node("alice")`` starts a node that lives until the test ends.

    The node runs in pytest-trio's ``nursery`` fixture, which is cancelled when
    the test finishes.
    """

    async def factory(member_id: str, *, limits: NodeLimits | None = None,
                      ident: Identity | None = None) -> Node:
        ident = ident or community.member(member_id)
        return Node(node_identity(ident), community.policy(), nursery,
                    clock=TrioWallClock(NOW), limits=limits)

    return factory
