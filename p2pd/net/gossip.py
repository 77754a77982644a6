"""Gossip routing for orders and cancels: which sessions get an item, and when.

Wire rules (docs/protocol.md §12.3, GossipControl and GossipBatch):

* a session on which either side sent ``GossipControl(NONE)`` carries no
  gossip in either direction (``Node.gossip_off``; ``Node.broadcast`` skips it
  for gossip-category messages too);
* ``GossipBatch`` goes only to a peer that sent a GossipControl on the session
  (so a peer that predates them never sees one).

Node policy (SHOULD-level in the spec; these are our choices):

* Fan-out. An item goes to every gossip session but the one it came from and
  the owner's, if there are at most ``degree`` of them. Otherwise: to every
  session whose peer wants ALL (peers that never sent a GossipControl
  included), plus SOME-mode sessions picked by a keyed hash of (item, peer),
  up to ``degree`` in all and at least one.
* We tell our gossip peers SOME while we have more than ``degree`` gossip
  sessions, ALL otherwise. So a node with few links (a leaf, a link in a chain)
  gets every item from every neighbour, exactly as with flooding; only
  well-connected nodes are sampled, and each of their many neighbours samples
  independently.
* Batching. The first items after a quiet spell are sent at once; items that
  arrive within 1 to 2 ``interval`` s (fixed per node) of a flush are queued
  per session and sent together, as one ``GossipBatch`` per 128 items. An item still queued for a peer that meanwhile sent us the
  same item is dropped.
* Compatibility. As initiator we send our mode first; a responder answers only
  once the peer has shown it knows GossipControl. A peer that closes the
  session with INVALID_MESSAGE after our GossipControl is remembered as
  predating it and gets none on later sessions.
* Lazy links (p2pd/net/gossip_lazy.py): sessions whose peer speaks
  GossipLink may turn lazy, and then get ids (GossipHave) instead of bodies.
"""

from __future__ import annotations

import hashlib
import math

import trio

from p2pd.errors import PeerGone
from p2pd.net.gossip_lazy import GossipStore, LazyLinks, send_batches
from p2pd.net.gossip_lazy import Item as Item
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import (
    BATCH_MAX,
    GOSSIP_ALL,
    GOSSIP_NONE,
    GOSSIP_SOME,
    GossipControl,
    OrderGossip,
    Reason,
)


def item_key(item: Item) -> bytes:
    """Identity of a gossip item: its kind and order id."""
    if isinstance(item, OrderGossip):
        return b"o" + item.order.order_id
    return b"c" + item.cancel.order_id


def _owner(item: Item) -> str:
    return item.order.member_id if isinstance(item, OrderGossip) else item.cancel.member_id


class GossipRouter:
    """Per-session gossip state, fan-out and batching for one node's market."""

    def __init__(self, node: Node, *, degree: int = 8, interval: float = 0.5,
                 lazy_interval: float = 0.0, store: GossipStore | None = None) -> None:
        if degree < 1 or interval < 0 or lazy_interval < 0:
            raise ValueError("gossip degree must be >= 1 and the intervals >= 0")
        self.node = node
        self.degree = degree
        self.interval = interval
        self.peer_mode: dict[PeerConnection, int] = {}  # the peer's last GossipControl
        self.sent_mode: dict[PeerConnection, int] = {}  # ours, last sent
        self.legacy: set[str] = set()  # members whose node predates GossipControl
        self._queues: dict[PeerConnection, dict[bytes, Item]] = {}
        self._flush_scheduled = False  # the flusher has work, or is about to look
        self._flusher: trio.lowlevel.ParkingLot | None = None  # where it waits for work (once started)
        self._last_flush = -math.inf
        self._salt = hashlib.blake2b(node.member_id.encode(), digest_size=16).digest()
        # Each node waits between 1 and 2 intervals, fixed by its id: of two
        # neighbours that got an item at once, the later one then hears it
        # from the earlier before flushing, and drops that copy.
        self.delay = interval * (1 + self._salt[0] / 256)
        self.counters = node.counters
        node.handle(GossipControl, self._on_control)
        # ``lazy_interval`` 0: never offer lazy links (every peer gets bodies).
        self.links = LazyLinks(node, lazy_interval, store, carries_gossip=self.carries_gossip,
                               peer_mode=self.peer_mode)

    # --- session state ---------------------------------------------------------------

    def carries_gossip(self, conn: PeerConnection) -> bool:
        return conn not in self.node.gossip_off

    def gossip_sessions(self) -> list[PeerConnection]:
        return [c for c in self.node.sessions.values() if c not in self.node.gossip_off]

    def _desired_mode(self) -> int:
        return GOSSIP_SOME if len(self.gossip_sessions()) > self.degree else GOSSIP_ALL

    def _update_off(self, conn: PeerConnection) -> None:
        if self.sent_mode.get(conn) == GOSSIP_NONE or self.peer_mode.get(conn) == GOSSIP_NONE:
            self.node.gossip_off.add(conn)
            self._queues.pop(conn, None)
        else:
            self.node.gossip_off.discard(conn)

    async def _send_mode(self, conn: PeerConnection, mode: int) -> None:
        self.sent_mode[conn] = mode
        self._update_off(conn)
        try:
            await conn.send(GossipControl(mode))
        except PeerGone:
            pass

    async def open_session(self, conn: PeerConnection, *, trade_only: bool) -> bool:
        """Set up a new session; True if it carries gossip (then catch up on it).

        ``trade_only``: we dialled only to trade, so we opt the session out of
        gossip (unless the peer predates GossipControl: then it gossips as before).
        """
        if conn.initiator and conn.member_id not in self.legacy:
            if trade_only:
                self.sent_mode[conn] = GOSSIP_NONE
                self._update_off(conn)
            await self._send_mode(conn, GOSSIP_NONE if trade_only else self._desired_mode())
            if not trade_only:
                await self.links.open_session(conn)
        await self.refresh()
        return self.carries_gossip(conn)

    async def _on_control(self, conn: PeerConnection, msg: GossipControl) -> None:
        self.peer_mode[conn] = msg.mode
        self._update_off(conn)
        if conn not in self.sent_mode and msg.mode != GOSSIP_NONE:
            # The peer speaks GossipControl: tell it our mode (which also lets
            # it batch to us).
            await self._send_mode(conn, self._desired_mode())
        await self.refresh()

    async def refresh(self) -> None:
        """Tell peers that know GossipControl whether we now want ALL or SOME."""
        desired = self._desired_mode()
        for conn in self.gossip_sessions():
            if (conn in self.sent_mode or conn in self.peer_mode) and self.sent_mode.get(conn) != desired:
                await self._send_mode(conn, desired)

    async def forget(self, conn: PeerConnection) -> None:
        """A session ended: drop its state (called from the market's close hook)."""
        sent = conn in self.sent_mode
        spoke = conn in self.peer_mode
        await self.links.forget(conn, self.carries_gossip(conn))
        self.sent_mode.pop(conn, None)
        self.peer_mode.pop(conn, None)
        self._queues.pop(conn, None)
        self.node.gossip_off.discard(conn)
        if sent and not spoke and conn.close_reason == Reason.INVALID_MESSAGE and conn.peer is not None:
            self.legacy.add(conn.peer.member_id)
            self.counters["gossip_legacy_peers"] += 1
        await self.refresh()

    # --- fan-out -----------------------------------------------------------------------

    def targets(self, key: bytes, source: PeerConnection | None, owner: str) -> list[PeerConnection]:
        """The sessions an item goes to (see the module docstring)."""
        off = self.node.gossip_off
        cands = [c for member, c in self.node.sessions.items()
                 if member != owner and c is not source and c not in off]
        if len(cands) <= self.degree:
            return cands
        full = [c for c in cands if self.peer_mode.get(c, GOSSIP_ALL) != GOSSIP_SOME]
        some = [c for c in cands if self.peer_mode.get(c, GOSSIP_ALL) == GOSSIP_SOME]
        some.sort(key=lambda c: hashlib.blake2b(key + c.member_id.encode(), key=self._salt,
                                                digest_size=8).digest())
        return full + some[: max(self.degree - len(full), 1)]

    def push(self, item: Item, source: PeerConnection | None = None) -> int:
        """Queue ``item`` for its targets; returns how many sessions it was queued for.

        Eager sessions get the body (batched); lazy ones its id, announced later.
        """
        key = item_key(item)
        targets = self.targets(key, source, _owner(item))
        eager, lazy = self.links.split(targets)
        self.links.accepted(key, item, source, lazy)
        for conn in eager:
            self._queues.setdefault(conn, {}).setdefault(key, item)
        if eager and not self._flush_scheduled:
            self._flush_scheduled = True
            if self._flusher is None:
                self._flusher = trio.lowlevel.ParkingLot()
                self.node.nursery.start_soon(self._flush_loop, self._flusher)
            else:
                self._flusher.unpark_all()
        return len(targets)

    def heard(self, conn: PeerConnection, item: Item) -> None:
        """``conn``'s peer sent us ``item``: it needs no copy from us."""
        key = item_key(item)
        self.links.heard(conn, key)
        queue = self._queues.get(conn)
        if queue is not None and queue.pop(key, None) is not None:
            self.counters["gossip_items_saved"] += 1

    async def duplicate(self, conn: PeerConnection, item: Item) -> None:
        """``conn`` pushed us ``item``, which we hold already (p2pd/net/gossip_lazy.py prunes)."""
        await self.links.duplicate(conn, item_key(item))

    # --- batching --------------------------------------------------------------------

    async def _flush_loop(self, parked: trio.lowlevel.ParkingLot) -> None:
        # Nagle-like: what arrives after a quiet spell goes out at once (after
        # one checkpoint, so items pushed in the same tick share a frame);
        # what arrives within ``delay`` of a flush waits for ``delay`` after
        # it and goes together. One task per node, parked while there is
        # nothing to send: a task and a timed sleep per burst were a tenth
        # of a simulated community's scheduling.
        while True:
            if not any(self._queues.values()):
                self._flush_scheduled = False
                await parked.park()
            due = self._last_flush + self.delay
            if trio.current_time() < due:
                await trio.sleep_until(due)
            else:
                await trio.lowlevel.checkpoint()
            self._last_flush = trio.current_time()
            await self.flush()

    async def flush(self) -> None:
        """Send everything queued now."""
        queues, self._queues = self._queues, {}
        for conn, items in queues.items():
            if not items or self.node.sessions.get(conn.member_id) is not conn:
                continue
            try:
                await self._send_items(conn, list(items.values()))
            except PeerGone:
                pass

    async def _send_items(self, conn: PeerConnection, items: list[Item]) -> None:
        if len(items) == 1 or conn not in self.peer_mode:
            for item in items:
                await conn.send(item)
            self.counters["gossip_frames_sent"] += len(items)
            return
        batches = (len(items) + BATCH_MAX - 1) // BATCH_MAX
        await send_batches(conn, items)
        self.counters["gossip_frames_sent"] += batches
        self.counters["gossip_batches_sent"] += batches
