"""Lazy gossip links: announce ids instead of pushing bodies (docs/protocol.md §12.3).

Wire rules (GossipLink, GossipHave, GossipWant; p2pd/net/gossip.py has the
flooding and batching they refine):

* only a peer that sent a ``GossipLink`` on the session gets ``GossipHave``
  and ``GossipWant`` on it; every other peer keeps getting bodies, so a node
  that never sends one (an older node, or one with ``gossip_lazy_interval``
  0) sees every item as before;
* ``GossipLink(eager)`` sets the session eager or lazy, both ways, from when
  it arrives.

Node policy (Plumtree, "Epidemic Broadcast Trees", SRDS 2007; our choices):

* A new gossip session is eager. A body that arrives pushed over an eager
  link-capable session while we already hold it, first delivered by another
  session that is still eager, makes that session lazy (``GossipLink(false)``),
  unless that would leave us fewer than ``PRUNE_FLOOR`` (3) eager sessions:
  the eager sessions thin out to a tree, over which each body reaches each
  node about once. A node that its peers' prunes leave with fewer than
  ``MIN_EAGER`` (2) grafts back up to it. The gap between the two is
  hysteresis: with one number for both (2 and 2, as at first), a prune
  that left the peer at the floor made it graft another session, whose
  duplicates caused the next prune, and the links never settled (100 nodes,
  12 simulated hours: 52,000 GossipLink messages; with the gap, 2,200).
* Every item we accept and would forward is also announced, by id, to the
  lazy sessions among its targets: ids accepted between half an interval
  and an interval and a half before each announcement round (every
  ``interval`` s, 30 by default), so the tree has long delivered what it
  will deliver. A peer that sent or announced an item to us is not told.
* An announcement of an item we lack and still want (an order whose slot is
  still open, a cancel of an order we hold) is answered with ``GossipWant``
  for it (at most ``WANT_MAX`` ids at a time; an id wanted from one peer is
  not asked of another for ``WANT_TIMEOUT`` s), and the session becomes
  eager again (``GossipLink(true)``): the tree missed us there.
* A ``GossipWant`` is answered with ``GossipBatch`` messages of what we hold.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from p2pd.errors import PeerGone
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    BATCH_MAX,
    HAVE_SLOTS_MAX,
    IDS_MAX,
    CancelGossip,
    GossipBatch,
    GossipHave,
    GossipLink,
    GossipWant,
    OrderGossip,
    Reason,
    SlotIds,
    pack_ids,
)

Item = OrderGossip | CancelGossip

WANT_MAX = 64  # ids we ask one peer for at a time
WANT_TIMEOUT = 10.0  # s before an id wanted from one peer may be asked of another
MIN_EAGER = 2  # a node pruned by its peers below this many eager gossip sessions grafts back up to it
PRUNE_FLOOR = 3  # a node prunes no session that would leave it fewer eager gossip sessions than this


class GossipStore(Protocol):
    """What the lazy links ask the market: whether an item is missing, and an item to send."""

    def lacks_order(self, order_id: bytes, slot_start: int) -> bool: ...

    def lacks_cancel(self, order_id: bytes) -> bool: ...

    def held_item(self, key: bytes) -> Item | None: ...


@dataclass
class _Recent:
    """An item we accepted lately: what we forward, who has it, whom to announce it to."""

    at: float
    item: Item
    first: PeerConnection | None  # who delivered it (None: we posted it)
    havers: set[PeerConnection] = field(default_factory=set)
    announce_to: list[PeerConnection] = field(default_factory=list)
    announced: bool = False


class LazyLinks:
    """The lazy half of one node's gossip router (see the module docstring)."""

    def __init__(self, node: Node, interval: float, store: GossipStore | None, *,
                 carries_gossip: Callable[[PeerConnection], bool],
                 peer_mode: Mapping[PeerConnection, int]) -> None:
        self.node = node
        self.interval = interval
        self.enabled = interval > 0
        self.store = store
        self.carries_gossip = carries_gossip
        self.peer_mode = peer_mode  # the router's: peers that answered our GossipControl
        self.counters = node.counters
        self.peers: set[PeerConnection] = set()  # sent us a GossipLink: speak Have/Want
        self.sent: set[PeerConnection] = set()  # we sent them a GossipLink
        self.lazy: set[PeerConnection] = set()  # link is lazy: ids only, both ways
        self.legacy: set[str] = set()  # members whose node closed on GossipLink
        self._recent: OrderedDict[bytes, _Recent] = OrderedDict()  # by acceptance time
        self._to_announce: deque[tuple[float, bytes]] = deque()  # (accepted at, key), in that order
        self._wanted: dict[bytes, float] = {}  # key -> when we may ask someone else
        self._announcing = False
        node.handle(GossipLink, self._on_link)
        node.handle(GossipHave, self._on_have)
        node.handle(GossipWant, self._on_want)

    def now(self) -> float:
        return self.node.clock.now()

    # --- sessions ---------------------------------------------------------------------

    def eager(self, conn: PeerConnection) -> bool:
        return conn not in self.lazy

    def _eager_count(self) -> int:
        return sum(1 for c in self.node.sessions.values() if c not in self.lazy and self.carries_gossip(c))

    async def _keep_eager(self) -> None:
        """Graft lazy sessions until MIN_EAGER gossip sessions are eager (or none is left to graft)."""
        missing = MIN_EAGER - self._eager_count()
        if missing <= 0:
            return
        candidates = sorted((c for c in self.lazy if c in self.peers
                             and self.node.sessions.get(c.member_id) is c), key=lambda c: c.member_id)
        for conn in candidates[:missing]:
            self.counters["gossip_links_grafted"] += 1
            await self._send_link(conn, True)

    async def _send_link(self, conn: PeerConnection, eager: bool) -> None:
        if eager:
            self.lazy.discard(conn)
        else:
            self.lazy.add(conn)
        self.sent.add(conn)
        self.counters["gossip_links_eager_sent" if eager else "gossip_links_lazy_sent"] += 1
        try:
            await conn.send(GossipLink(eager))
        except PeerGone:
            pass

    async def open_session(self, conn: PeerConnection) -> None:
        """An initiator declares lazy links right after its GossipControl (never to a legacy member)."""
        if self.enabled and conn.initiator and conn.member_id not in self.legacy:
            await self._send_link(conn, True)

    async def _on_link(self, conn: PeerConnection, msg: GossipLink) -> None:
        if not self.enabled:
            return  # we offer no lazy links: the peer keeps pushing bodies, as to an older node
        self.peers.add(conn)
        if msg.eager:
            self.lazy.discard(conn)
        else:
            self.lazy.add(conn)
        if conn not in self.sent and self.carries_gossip(conn):
            await self._send_link(conn, msg.eager)  # our declaration, in the state the peer set
        if not msg.eager:
            await self._keep_eager()  # the peer pruned us: do not end up on a thread

    async def forget(self, conn: PeerConnection, carried_gossip: bool) -> None:
        """A session ended. If it was an eager gossip link, every lazy link turns eager.

        Why: the eager links form a tree; one that closes cuts it in two, and
        until the announcements show what is missing each part would miss the
        other's items. Taking bodies on every link for a while re-joins the
        parts at once; the duplicates that follow thin the links out again.
        """
        sent, spoke = conn in self.sent, conn in self.peers
        was_eager = carried_gossip and conn not in self.lazy
        self.peers.discard(conn)
        self.sent.discard(conn)
        self.lazy.discard(conn)
        # The peer knew GossipControl (it answered ours) but closed on GossipLink.
        if (sent and not spoke and conn in self.peer_mode
                and conn.close_reason == Reason.INVALID_MESSAGE and conn.peer is not None):
            self.legacy.add(conn.peer.member_id)
            self.counters["gossip_link_legacy_peers"] += 1
        if was_eager and self.enabled:
            for other in sorted((c for c in self.lazy if c in self.peers and c is not conn), key=lambda c: c.member_id):
                self.counters["gossip_links_grafted"] += 1
                await self._send_link(other, True)

    # --- pushing and pruning ----------------------------------------------------------

    def split(self, targets: list[PeerConnection]) -> tuple[list[PeerConnection], list[PeerConnection]]:
        """(eager, lazy) of an item's targets: bodies to the first, ids to the second."""
        if not self.lazy:
            return targets, []
        eager = [c for c in targets if c not in self.lazy or c not in self.peers]
        lazy = [c for c in targets if c in self.lazy and c in self.peers]
        return eager, lazy

    def accepted(self, key: bytes, item: Item, source: PeerConnection | None,
                 announce_to: list[PeerConnection]) -> None:
        """We accepted (or posted) ``item`` and push it; announce it to ``announce_to`` later."""
        if not self.enabled:
            return
        now = self.now()
        self._expire(now)
        self._wanted.pop(key, None)
        recent = _Recent(now, item, source, {source} if source is not None else set(), announce_to)
        self._recent[key] = recent
        self._recent.move_to_end(key)
        if announce_to:
            self._to_announce.append((now, key))
            if not self._announcing:
                self._announcing = True
                self.node.nursery.start_soon(self._announce_loop)

    def heard(self, conn: PeerConnection, key: bytes) -> None:
        recent = self._recent.get(key)
        if recent is not None:
            recent.havers.add(conn)

    async def duplicate(self, conn: PeerConnection, key: bytes) -> None:
        """``conn`` pushed us an item we hold: make that session lazy, unless it is our only way in."""
        if key in self._wanted or conn not in self.peers or conn in self.lazy:
            return
        recent = self._recent.get(key)
        first = recent.first if recent is not None else None
        if (first is None or first is conn or first in self.lazy
                or self.node.sessions.get(first.member_id) is not first
                or self._eager_count() <= PRUNE_FLOOR):
            return
        self.counters["gossip_links_pruned"] += 1
        await self._send_link(conn, False)

    # --- announcing -------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        horizon = now - 3 * self.interval
        recent = self._recent
        while recent:
            key, first = next(iter(recent.items()))
            if first.at > horizon:
                break
            del recent[key]
        if len(self._wanted) > 4 * IDS_MAX:
            self._wanted = {k: t for k, t in self._wanted.items() if t > now}

    async def _announce_loop(self) -> None:
        try:
            while self._to_announce:
                await trio.sleep(self.interval)
                await self._announce(self.now())
        finally:
            self._announcing = False

    async def _announce(self, now: float) -> None:
        """Announce what we accepted between 1.5 and 0.5 intervals ago to its lazy targets."""
        cutoff = now - self.interval / 2
        per_peer: dict[PeerConnection, tuple[dict[int, list[bytes]], list[bytes]]] = {}
        queue = self._to_announce
        while queue and queue[0][0] <= cutoff:
            _, key = queue.popleft()
            recent = self._recent.get(key)
            if recent is None or recent.announced:
                continue
            recent.announced = True
            for conn in recent.announce_to:
                if conn in recent.havers or conn not in self.lazy:
                    continue  # it has the item, or the link turned eager (it got the body)
                orders, cancels = per_peer.setdefault(conn, ({}, []))
                item = recent.item
                if isinstance(item, OrderGossip):
                    orders.setdefault(item.order.slot_start, []).append(key[1:])
                else:
                    cancels.append(key[1:])
        for conn, (orders, cancels) in per_peer.items():
            if self.node.sessions.get(conn.member_id) is not conn:
                continue
            for have in _haves(orders, cancels):
                self.counters["gossip_haves_sent"] += 1
                try:
                    await conn.send(have)
                except PeerGone:
                    break
        self._expire(now)

    # --- announcements and requests from peers -----------------------------------------

    async def _on_have(self, conn: PeerConnection, msg: GossipHave) -> None:
        store = self.store
        if store is None or not self.carries_gossip(conn):
            return
        now = self.now()
        orders: list[bytes] = []
        cancels: list[bytes] = []
        for slot_start, oid in msg.orders():
            key = b"o" + oid
            self.heard(conn, key)
            if store.lacks_order(oid, slot_start) and self._may_want(key, now):
                orders.append(oid)
        for oid in msg.cancels():
            key = b"c" + oid
            self.heard(conn, key)
            if store.lacks_cancel(oid) and self._may_want(key, now):
                cancels.append(oid)
        wanted = (orders + cancels)[:WANT_MAX]
        if not wanted:
            return
        orders, cancels = orders[:WANT_MAX], cancels[: WANT_MAX - min(len(orders), WANT_MAX)]
        for oid in orders:
            self._wanted[b"o" + oid] = now + WANT_TIMEOUT
        for oid in cancels:
            self._wanted[b"c" + oid] = now + WANT_TIMEOUT
        self.counters["gossip_wants_sent"] += 1
        self.counters["gossip_ids_wanted"] += len(orders) + len(cancels)
        try:
            await conn.send(GossipWant(pack_ids(orders), pack_ids(cancels)))
            if conn in self.lazy and conn in self.peers:
                self.counters["gossip_links_grafted"] += 1
                await self._send_link(conn, True)  # the tree missed us: take bodies here again
        except PeerGone:
            pass

    def _may_want(self, key: bytes, now: float) -> bool:
        until = self._wanted.get(key)
        return until is None or until <= now

    async def _on_want(self, conn: PeerConnection, msg: GossipWant) -> None:
        store = self.store
        if store is None or not self.carries_gossip(conn):
            return
        items: list[Item] = []
        for key in [b"o" + oid for oid in msg.orders()] + [b"c" + oid for oid in msg.cancels()]:
            recent = self._recent.get(key)
            item = recent.item if recent is not None else store.held_item(key)
            if item is not None:
                items.append(item)
                if recent is not None:
                    recent.havers.add(conn)
        self.counters["gossip_ids_served"] += len(items)
        try:
            await send_batches(conn, items)
        except PeerGone:
            pass


def _haves(orders: dict[int, list[bytes]], cancels: list[bytes]) -> Iterable[GossipHave]:
    """GossipHave messages for these ids, each within the message's limits."""
    slots: list[SlotIds] = []
    count = 0
    for slot_start, ids in sorted(orders.items()):
        while ids:
            if count == IDS_MAX or len(slots) == HAVE_SLOTS_MAX:
                yield GossipHave(tuple(slots), b"")
                slots, count = [], 0
            take, ids = ids[: IDS_MAX - count], ids[IDS_MAX - count :]
            slots.append(SlotIds(slot_start, pack_ids(take)))
            count += len(take)
    rest = cancels
    while rest or slots:
        take, rest = rest[: IDS_MAX - count], rest[IDS_MAX - count :]
        yield GossipHave(tuple(slots), pack_ids(take))
        slots, count = [], 0


async def send_batches(conn: PeerConnection, items: list[Item]) -> None:
    """Send ``items`` as GossipBatch messages of up to BATCH_MAX (orders first within each)."""
    for i in range(0, len(items), BATCH_MAX):
        chunk = items[i : i + BATCH_MAX]
        orders = tuple(x for x in chunk if isinstance(x, OrderGossip))
        cancels = tuple(x for x in chunk if isinstance(x, CancelGossip))
        await conn.send(GossipBatch(orders, cancels))
