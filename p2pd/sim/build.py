"""Building a simulated community: :func:`open_community`.

Apart from p2pd/sim/community.py (the nodes) so that the scenarios (S2-S4),
which extend a community, import the community module and not the reverse.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from p2pd.sim.community import (
    DEFAULT_TIME_SCALE,
    SimCommunity,
    SimConfig,
    check_virtual_clock,
    households,
)
from p2pd.sim.scenarios import setup_scenario
from protocol import DecodedMemo, VerifiedMemo, install_decoded_memo, install_verified_memo


@asynccontextmanager
async def open_community(n: int = 10, seed: int = 1, scenario: str = "S1", *, memory: bool = True,
                         store: str = "memory", time_scale: float = DEFAULT_TIME_SCALE,
                         hours: float = 24.0, virtual: bool = False, config: SimConfig | None = None,
                         start_agents: bool = True,
                         members: Collection[int] | None = None) -> AsyncIterator[SimCommunity]:
    """Build and run a community for the ``async with`` block.

    Yields once every node is up, the topology is connected and (unless
    ``start_agents`` is False) the agents trade with the market clock at the
    simulated start. ``config`` overrides the other arguments. Raises
    :class:`SimError` for an unknown or unbuilt scenario, or for virtual time
    outside an autojumping MockClock (pytest-trio's ``autojump_clock``).
    ``members``: only the households with these member indexes (whole
    neighbourhood markets: p2pd/sim/markets.py); default every one.
    """
    cfg = config or SimConfig(nodes=n, seed=seed, scenario=scenario, memory=memory, store=store,
                              time_scale=time_scale, hours=hours, virtual=virtual)
    if cfg.virtual:
        check_virtual_clock()
    store_dir = tempfile.mkdtemp(prefix="p2pd-sim-") if cfg.store == "sqlite" else None
    community: SimCommunity | None = None
    memo = VerifiedMemo() if cfg.shared_verify else None
    previous = install_verified_memo(memo)
    previous_decoded = install_decoded_memo(DecodedMemo() if cfg.shared_decode else None)
    try:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            community = SimCommunity(cfg, nursery, stack, store_dir)
            community.verified = memo
            margin = cfg.agent.lead_slots + 2
            for h in households(cfg, community.rules.slot_len, margin, only=members):
                await community.add_node(community.identity(h.member_id), h)
            await community.build_topology()
            if cfg.scenario != "S1":
                await setup_scenario(community)
            if start_agents:
                community.start_agents()
            yield community
    finally:
        install_verified_memo(previous)
        install_decoded_memo(previous_decoded)
        for repo in community.repos if community is not None else ():
            repo.close()  # after every node (and its writer) has stopped
        if store_dir is not None:
            shutil.rmtree(store_dir, ignore_errors=True)
