"""The peer simulation harness: N real nodes trading in one process.

Each simulated member runs the daemon's own parts: :class:`~p2pd.net.node.Node`,
:class:`~p2pd.roles.trading.Market`, :class:`~p2pd.roles.receipt_writer.ReceiptWriter`
and an :class:`~p2pd.roles.agent.Agent`, with its own store (a SQLite file in a
temporary directory, or memory). Nodes talk over real Noise sessions, on
loopback TCP (listeners on 127.0.0.1 port 0, then dial) or on trio's
in-memory streams. Meters are :class:`meter_drivers.SimulatedMeter`
households from seeded profiles.

Time (docs/simulation.md, "Time"). With ``virtual`` (in-memory streams and
stores only) the whole run sits under trio's ``MockClock(autojump_threshold=0)``
(:func:`p2pd.sim.run.run_sim` installs it): simulated time advances only when
every task waits, so one clock, :class:`~p2pd.clock.TrioWallClock` at scale 1
from the simulated start, serves the market, the agents and the session
timers, and the outcome depends on the seed, not on the machine's speed.
Otherwise two clocks: session timers and credentials use wall time
(``wall_clock``), while the market and the agents use ``market_clock``, which
starts at the simulated start (a midsummer midnight, so PV matters) and runs
``time_scale`` times faster than the wall clock.

Randomness: every draw that can change the outcome (households, topology,
order and trade ids) comes from an RNG seeded with ``seed``.

Topology: each node dials ``degree`` others chosen with the seed; the agents
dial an order's owner on demand when they take. Not a full mesh.

Use :func:`open_community` from tests and :func:`p2pd.sim.run.run_sim` for
the ``p2pd sim`` command.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import time
from collections import Counter
from collections.abc import Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
import trio.testing

from meter_drivers import Reading, SimulatedMeter
from p2pd.clock import TrioWallClock
from p2pd.errors import P2pdError
from p2pd.market.pseudonyms import Wallet
from p2pd.net.identity import NodeIdentity, NodeKeys
from p2pd.net.listener import dial, serve_p2p
from p2pd.net.node import Node, NodeLimits, open_node
from p2pd.net.peer import PeerConnection
from p2pd.roles.agent import Agent, AgentConfig, PerfectForesight
from p2pd.roles.anon import LocalPseudonymSource
from p2pd.roles.receipt_writer import ReceiptWriter
from p2pd.roles.trading import Market, MarketRules
from p2pd.sim.pace import SimClock
from p2pd.sim.pipe import pipe_pair
from p2pd.sim.profiles import facts_of, load_profiles
from protocol import (
    Credential,
    PseudonymIssuer,
    SigningKey,
    Timeouts,
    TrustPolicy,
    VerifiedMemo,
    epoch_of,
)
from store import ReceiptRecord, Repository, open_repository

PSEUDONYM_QUOTA = 256  # pseudonyms (orders) per member and day: two per slot, and some to spare

SIM_START = 1_782_000_000
"""2026-06-21 00:00 UTC: a midsummer day, so PV matters."""
SCENARIOS = ("S1", "S2", "S3", "S4")
COMMUNITY = "simstreet"
DEFAULT_TIME_SCALE = 2880.0
"""Wall-clock mode: a simulated day in 30 s (faster runs start to lose trades to latency)."""
NODES_AT_FULL_SCALE = 10
"""Nodes per process that keep up at :data:`DEFAULT_TIME_SCALE` on the 2-core machine
(docs/simulation.md); the CLI starts larger runs slower in proportion."""
MAX_NODES = 1000
MAX_HOURS = 31 * 24
"""A month: long enough for a week and for a month's bills."""


class SimError(P2pdError):
    """The simulation cannot run as asked (bad option, scenario not built yet)."""


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``store`` is "sqlite" (a file per node) or "memory".

    ``virtual`` runs on virtual time (needs ``memory`` and ``store="memory"``:
    real I/O cannot run under an autojumping clock); ``time_scale`` applies
    only without it.
    """

    nodes: int = 10
    scenario: str = "S1"
    hours: float = 24.0
    seed: int = 1
    memory: bool = False
    time_scale: float = DEFAULT_TIME_SCALE
    store: str = "sqlite"
    degree: int = 4
    start: int = SIM_START
    pv_share: float = 0.5
    attacks: tuple[str, ...] = ()
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(lead_slots=4))
    policing: bool = True
    virtual: bool = False
    keepalive: float = 900.0
    """Virtual time: seconds between keepalive pings on an idle session (the
    idle timeout is three of them). Wall-clock runs keep the daemon's default."""
    share_curves: bool = True
    """S3: representatives clear on secret-shared curves (the daemon's default);
    False: they send the broker one aggregated order per price step, as before."""
    shared_verify: bool = True
    """Nodes share the signatures that verified (protocol.VerifiedMemo): each
    node still checks every signature it relies on, but one the community
    verified already costs a lookup instead of an Ed25519 verify. Outcomes are
    the same either way (only successes are shared); False measures the CPU
    a community of separate machines would spend."""
    shared_decode: bool = True
    """Nodes share the messages decoded from identical bytes
    (protocol.DecodedMemo): the nodes at one distance from an order's owner
    receive the same plaintext, and one decode serves them all. Outcomes are
    the same either way (a message is immutable, and bytes that fail to decode
    are decoded again each time); False measures separate machines' CPU."""
    profiles: str | None = None
    """A directory of household profiles (p2pd/sim/profiles.py) instead of the seeded model."""
    market_size: int = 0
    """Households per market: the community is split, by member index, into
    ``nodes / market_size`` (rounded) neighbourhood markets of near-equal size,
    each its own gossip mesh (a node dials only its own market's members, so
    its orders reach them alone and every trade stays inside). 0: one market
    of every household. The scenarios S2-S4 add roles for one market only."""
    warmup: int = 0
    """Simulated seconds the nodes trade before ``start`` (whole slots, at most a day): the
    report still covers ``[start, end)`` only, so a run is judged with its agents
    already in their steady state instead of all starting at once."""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise SimError(f"unknown scenario {self.scenario!r} (known: {', '.join(SCENARIOS)})")
        if not 2 <= self.nodes <= MAX_NODES:
            raise SimError(f"--nodes must be between 2 and {MAX_NODES} (got {self.nodes})")
        if not 0.25 <= self.hours <= MAX_HOURS:
            raise SimError(f"--hours must be between 0.25 (one slot) and {MAX_HOURS} (a month) "
                           f"(got {self.hours:g})")
        if self.start % 900:
            raise SimError("--start must be on a quarter hour (UTC)")
        if self.warmup % 900 or not 0 <= self.warmup <= 86400:
            raise SimError(f"--warm-up must be whole quarter hours, at most a day (got {self.warmup / 60:g} min)")
        if not self.time_scale > 0:
            raise SimError("--time-scale must be positive")
        if self.store not in ("sqlite", "memory"):
            raise SimError("--store must be sqlite or memory")
        if self.market_size and not 2 <= self.market_size <= self.nodes:
            raise SimError(f"--market-size must be between 2 and --nodes ({self.nodes}) "
                           f"(got {self.market_size})")
        if self.market_size and self.scenario != "S1":
            raise SimError("--market-size is for S1: the roles of S2-S4 serve one market")
        if self.virtual and not (self.memory and self.store == "memory"):
            raise SimError("virtual time needs in-memory streams and stores (--memory --store memory)")

    @property
    def market_scale(self) -> float:
        """Simulated seconds per second of trio's clock."""
        return 1.0 if self.virtual else self.time_scale

    @property
    def markets(self) -> int:
        """How many neighbourhood markets the households form (see ``market_size``)."""
        return max(1, (2 * self.nodes + self.market_size) // (2 * self.market_size)) if self.market_size else 1

    def market_of(self, index: int) -> int:
        """The market of the household with member index ``index`` (:func:`market_of`)."""
        return market_of(index, self.nodes, self.markets)

    @property
    def end(self) -> int:
        return self.start + int(self.hours * 3600)

    @property
    def run_start(self) -> int:
        """When the nodes start trading: ``start`` less the warm-up."""
        return self.start - self.warmup


class HouseholdMeter(Protocol):
    """A meter readable at any time, with its PV production: :class:`meter_drivers.SimulatedMeter`
    or :class:`p2pd.sim.profiles.ProfileMeter`."""

    def reading_at(self, t: float) -> Reading: ...

    def pv_wh(self, start: int, end: int) -> int: ...


@dataclass
class Household:
    """A member's meter: a seeded profile (or a loaded one), tabulated at slot boundaries."""

    index: int
    member_id: str
    kind: str
    daily_kwh: float
    pv_kwp: float
    meter: HouseholdMeter
    table: dict[int, Reading] = field(default_factory=dict)

    def reading_at(self, t: float) -> Reading:
        """The meter at ``t``; slot boundaries come from the precomputed table."""
        hit = self.table.get(int(t)) if t == int(t) else None
        return hit if hit is not None else self.meter.reading_at(t)

    def production_wh(self, start: int, end: int) -> int:
        """PV energy produced in ``[start, end)``, Wh."""
        return self.meter.pv_wh(start, end) if self.pv_kwp else 0


def households(cfg: SimConfig, slot_len: int, margin_slots: int,
               only: Collection[int] | None = None) -> list[Household]:
    """The community's households: a seeded mix of sizes, with and without PV, or
    ``cfg.profiles``'. ``only``: just these members (the same ones as in the whole list)."""
    if cfg.profiles is not None:
        homes = [Household(i, f.member_id, f.kind, f.daily_kwh, f.pv_kwp, f.meter)
                 for i, f in enumerate(map(facts_of, load_profiles(cfg.profiles, cfg.nodes)))]
    else:
        homes = _seeded_households(cfg)
    out = []
    for h in homes:
        if only is not None and h.index not in only:
            continue
        # One member at a time, so the meter's small profile cache is not thrashed.
        for t in range(cfg.run_start, cfg.end + (margin_slots + 1) * slot_len + 1, slot_len):
            h.table[t] = h.meter.reading_at(t)
        out.append(h)
    return out


def _seeded_households(cfg: SimConfig) -> list[Household]:
    rng = random.Random(f"households/{cfg.seed}")
    out = []
    for i in range(cfg.nodes):
        pv = rng.random() < cfg.pv_share
        kind = "prosumer" if pv else "consumer"
        daily = round(rng.uniform(6.0, 14.0), 2)
        kwp = round(rng.choice((2.5, 3.0, 3.5, 4.0, 5.0, 6.0)), 1) if pv else 0.0
        meter = SimulatedMeter({"seed": cfg.seed, "member": i, "kind": kind, "daily_kwh": daily,
                                "pv_kwp": kwp, "origin": cfg.start - 86400})
        out.append(Household(i, f"m{i:04d}", kind, daily, kwp, meter))
    return out


@dataclass(eq=False)
class SimNode:
    """One simulated member: its node, market, store, agent and meter."""

    household: Household | None
    identity: NodeIdentity
    node: Node
    market: Market
    writer: ReceiptWriter
    repo: Repository
    agent: Agent | None = None
    address: tuple[str, int] | None = None

    @property
    def member_id(self) -> str:
        return self.node.member_id


class SimCommunity:
    """The running community; see the module docstring."""

    def __init__(self, cfg: SimConfig, nursery: trio.Nursery, stack: AsyncExitStack, store_dir: str | None) -> None:
        self.cfg = cfg
        self.nursery = nursery
        self._stack = stack
        self._store_dir = store_dir
        self.issuer = SigningKey.generate()
        self.policy = TrustPolicy(COMMUNITY, frozenset({self.issuer.public}))
        # Issue 16: the issuer's pseudonym service; members post pseudonymous orders.
        self.pseudonyms = PseudonymIssuer(self.issuer, COMMUNITY, quota=PSEUDONYM_QUOTA)
        self.rules = MarketRules()
        self.market_clock = SimClock(float(cfg.run_start), cfg.market_scale)
        # Virtual time: sessions live in simulated time as well, so their
        # timers (keepalive, idle, rekey) run at their real rates.
        self.wall_clock = self.market_clock if cfg.virtual else TrioWallClock(time.time())
        self.nodes: list[SimNode] = []
        self.by_id: dict[str, SimNode] = {}
        self.extra: list[SimNode] = []  # attackers' and probes' nodes: not members of the accounts
        self.policers: list[Any] = []
        self.remote: dict[str, tuple[str, int]] = {}
        """Members in other processes (p2pd/sim/workers.py): their listening addresses."""
        self.repos: list[Repository] = []
        self.traffic: Counter[str] = Counter()
        self.started_wall: float | None = None
        self.runners: list[Any] = []
        """S2-S4 (p2pd/sim/scenarios.py): ``run`` tasks of the role runners, started with the agents."""
        self.scenario: Any = None
        """S2-S4: the scenario's state (:class:`p2pd.sim.scenarios.Scenario`)."""
        self.verified: VerifiedMemo | None = None
        """The shared memo of verified signatures (``SimConfig.shared_verify``), set by open_community."""

    # --- identities --------------------------------------------------------------

    def identity(self, member_id: str, *, issuer: SigningKey | None = None, community: str = COMMUNITY,
                 valid: tuple[int, int] | None = None, keys: NodeKeys | None = None,
                 credential_noise_pk: bytes | None = None) -> NodeIdentity:
        """A node identity; by default a valid member of the community.

        Credentials must hold both at wall time (sessions) and at simulated
        time (orders and receipts), so they span both.
        """
        keys = keys or NodeKeys.generate()
        lo = int(min(self.cfg.run_start, self.wall_clock.base)) - 86400
        hi = int(max(self.cfg.end, self.wall_clock.base)) + 30 * 86400
        valid_from, valid_until = valid or (lo, hi)
        cred = Credential.issue(
            issuer or self.issuer, community=community, member_id=member_id, role="prosumer",
            metering_point=_metering_point(member_id), sign_pk=keys.signing.public,
            noise_pk=credential_noise_pk or keys.noise_public, valid_from=valid_from,
            valid_until=valid_until)
        return NodeIdentity(keys, cred)

    # --- nodes -------------------------------------------------------------------

    async def add_node(self, identity: NodeIdentity, household: Household | None = None, *,
                       writer: ReceiptWriter | None = None, listen: bool = True,
                       withdraw_sold_out: bool = True) -> SimNode:
        """Start a node with its market and store; members get an agent (not started).

        ``writer`` and ``withdraw_sold_out=False`` make attackers (p2pd/sim/attacks*.py).
        """
        node: Node = await self.nursery.start(self._run_node, identity)
        if self.cfg.store == "sqlite" and self._store_dir is not None:
            repo = open_repository(f"sqlite:///{self._store_dir}/{identity.member_id}.db")
        else:
            repo = open_repository("memory://")
        self.repos.append(repo)
        writer = writer or ReceiptWriter(repo)
        await node.nursery.start(writer.run)
        market = Market(node, repo, writer, rules=self.rules, clock=self.market_clock,
                        random_bytes=random.Random(f"ids/{self.cfg.seed}/{identity.member_id}").randbytes,
                        withdraw_sold_out=withdraw_sold_out)
        await market.load()
        sim = SimNode(household, identity, node, market, writer, repo)
        node.on_open.append(self._count_open)
        node.on_close.append(self._count_close)
        if self.cfg.policing:
            self._police(node)
        if listen and not self.cfg.memory:
            listeners = await node.nursery.start(serve_p2p, node, "127.0.0.1", 0)
            sim.address = listeners[0].socket.getsockname()[:2]
        if household is not None:
            # Issue 16: orders signed by pseudonyms from the community's issuer.
            # The secret is seeded (like ids) so a run repeats for a seed; a daemon's is random.
            secret = random.Random(f"pseudonyms/{self.cfg.seed}/{identity.member_id}").randbytes(32)
            market.wallet = Wallet(secret=secret)
            market.pseudonym_source = LocalPseudonymSource(self.pseudonyms, identity.credential)
            if not self.cfg.virtual:
                # The issuer's RSA work (about 10 ms a pseudonym) would stall a
                # wall-clock run: fill the wallet before the clock starts.
                market.wallet.batch = min(PSEUDONYM_QUOTA, max(16, int(2 * (self.cfg.end - self.cfg.run_start) / 3600)))
                await market.refill_pseudonyms(self.cfg.run_start)
                for epoch in range(epoch_of(self.cfg.run_start), epoch_of(self.cfg.end) + 1):
                    self.pseudonyms.epoch_key(epoch)
            sim.agent = Agent(market, PerfectForesight(household), self.cfg.agent,
                              dial=functools.partial(self.connect, sim))
            self.nodes.append(sim)
        else:
            self.extra.append(sim)
        self.by_id.setdefault(identity.member_id, sim)  # an impersonator never replaces its victim
        return sim

    async def _run_node(self, identity: NodeIdentity, *,
                        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        # Each node lives in a task of the community's nursery, whoever adds it.
        # Its own copy of the policy: its own cache of verified credentials,
        # as if it ran in a process of its own.
        policy = dataclasses.replace(self.policy)
        limits = NodeLimits()
        if self.cfg.virtual:
            # At the daemon's 30 s a day of keepalives would cost more than the
            # trading (four frames per session every 30 simulated seconds); a
            # wall-clock run at 2880x sends next to none.
            k = self.cfg.keepalive
            limits = NodeLimits(timeouts=Timeouts(ping_interval=k, idle_timeout=3 * k))
        async with open_node(identity, policy, clock=self.wall_clock, limits=limits) as node:
            task_status.started(node)
            await trio.sleep_forever()

    def _police(self, node: Node) -> None:
        try:
            from p2pd.net.policing import PolicingConfig, attach_policer
        except ImportError:  # another developer's module; optional here
            return
        # Wall-clock mode: simulated time runs time_scale times faster than the
        # wall clock the policer measures, so honest rates grow with it: scale
        # the allowances. In virtual time the policer sees simulated time.
        f = max(1.0, self.cfg.market_scale / 288)
        # Every simulated peer dials from the same host (127.0.0.1, or "mem"),
        # so the per-host connection allowance is shared by the whole community.
        n = self.cfg.nodes
        base = PolicingConfig()
        cfg = PolicingConfig(control_rate=base.control_rate * f, gossip_rate=base.gossip_rate * f,
                             trade_rate=base.trade_rate * f, node_capacity=base.node_capacity * f,
                             conn_rate_per_host=base.conn_rate_per_host * f * n,
                             conn_burst_per_host=base.conn_burst_per_host * n)
        self.policers.append(attach_policer(node, cfg))

    async def _count_open(self, conn: PeerConnection) -> None:
        if not conn.initiator:  # count each session once, at its responder
            self.traffic["handshakes"] += 1

    async def _count_close(self, conn: PeerConnection) -> None:
        self.traffic["messages"] += conn.stats.messages_in
        self.traffic["bytes"] += conn.stats.bytes_in

    def traffic_totals(self) -> dict[str, int]:
        """Messages and bytes received (closed and live sessions), handshakes, failures."""
        out = Counter(self.traffic)
        for sim in self.nodes + self.extra:
            for conn in sim.node.sessions.values():
                out["messages"] += conn.stats.messages_in
                out["bytes"] += conn.stats.bytes_in
            for key, value in sim.node.counters.items():
                if key.startswith("handshake_failed:"):
                    out["handshake_failures"] += value
                if key in ("feedback_sent", "bans") or key.startswith("policed:"):
                    out["policed" if key.startswith("policed:") else key] += value
        if self.verified is not None:
            out["verifications_done"] = self.verified.misses
            out["verifications_shared"] = self.verified.hits
        return dict(out)

    async def connect(self, src: SimNode, member_id: str) -> PeerConnection:
        """Open a session from ``src`` to ``member_id``'s node. Raises PeerGone/OSError,
        KeyError for an unknown member."""
        target = self.by_id.get(member_id)
        if target is None:  # in another worker process
            return await dial(src.node, *self.remote[member_id])
        if self.cfg.memory:
            stream = await self.open_stream(target, f"mem:{src.member_id}")
            return await src.node.connect_stream(stream, f"mem:{member_id}")
        assert target.address is not None
        return await dial(src.node, *target.address)

    async def open_stream(self, target: SimNode, label: str) -> trio.abc.Stream:
        """A raw stream into ``target`` (for attackers): memory pair or TCP."""
        if self.cfg.memory:
            client, server = pipe_pair()
            target.node.nursery.start_soon(target.node.accept, server, label)
            return client
        assert target.address is not None
        return await trio.open_tcp_stream(*target.address)

    async def build_topology(self) -> int:
        """Each node dials ``degree`` seeded random others; returns sessions made."""
        pairs = topology(self.cfg.seed, self.cfg.nodes, self.cfg.degree, self.cfg.markets)
        # A process may run only some markets (p2pd/sim/markets.py): it dials their pairs.
        local = {s.household.index: s for s in self.nodes if s.household is not None}
        limiter = trio.CapacityLimiter(8)
        made = 0

        async def one(i: int, j: int) -> None:
            nonlocal made
            async with limiter:
                for _ in range(3):
                    try:
                        await self.connect(local[i], local[j].member_id)
                        made += 1
                        return
                    except (P2pdError, OSError):
                        await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for i, j in sorted(pairs):
                if i in local and j in local:
                    nursery.start_soon(one, i, j)
        return made

    def start_agents(self) -> None:
        """Restart the market clock at the simulated start and let every agent trade."""
        if not self.cfg.virtual:
            # Building the community took wall time; the simulated day starts
            # now. (In virtual time it took next to none, and sessions share
            # the clock, which must not run backwards.)
            self.market_clock.origin = trio.current_time()
        self.started_wall = time.perf_counter()
        for sim in self.nodes:
            if sim.agent is not None:  # S2/S3 clients have none: their representative trades
                sim.node.nursery.start_soon(sim.agent.run)
        for run in self.runners:
            self.nursery.start_soon(run)

    async def wait_until(self, sim_time: float) -> None:
        """Sleep until the market clock reads ``sim_time``."""
        clock = self.market_clock
        await trio.sleep(max(0.0, (sim_time - clock.now()) / clock.scale))

    def receipts(self) -> list[ReceiptRecord]:
        """Every receipt in every node's store, once per trade id."""
        seen: dict[bytes, ReceiptRecord] = {}
        for sim in self.nodes + self.extra:
            for rec in sim.repo.receipts():
                seen.setdefault(rec.trade_id, rec)
        return list(seen.values())


def market_of(index: int, n: int, markets: int) -> int:
    """The market of member ``index`` of ``n`` split into ``markets``: contiguous, sizes differ by at most one."""
    return index * markets // n


def topology(seed: int, n: int, degree: int, markets: int = 1) -> list[tuple[int, int]]:
    """The seeded gossip mesh: (dialer, dialled) member indexes, sorted.

    With several ``markets`` (see :attr:`SimConfig.market_size`) each member
    dials only members of its own, so the markets share no session."""
    rng = random.Random(f"topology/{seed}")
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        mine = market_of(i, n, markets)
        peers = [k for k in range(n) if k != i and market_of(k, n, markets) == mine]
        for j in rng.sample(peers, min(degree, len(peers))):
            if (j, i) not in pairs:
                pairs.add((i, j))
    return sorted(pairs)


def _metering_point(member_id: str) -> str:
    # hash() of a str changes from process to process; this does not.
    return "SIM" + str(int.from_bytes(hashlib.blake2b(member_id.encode(), digest_size=8).digest(), "big")
                       % 10**12).zfill(12)


def check_virtual_clock() -> None:
    """Raise :class:`SimError` unless trio runs on an autojumping MockClock."""
    clock = trio.lowlevel.current_clock()
    if not (isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold == 0):
        raise SimError("virtual time needs trio.run(..., clock=MockClock(autojump_threshold=0))")
