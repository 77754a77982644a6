"""Relaying takes between members that have no session with each other (docs/protocol.md §12.9).

Why a relay, not a dial: a household behind a NAT accepts no connection, so
"dial the owner by its announced address" fails exactly when it is needed.
It does dial out, and keeps sessions with a few peers; a member both parties
have a session with carries the take there and the answer back.

:class:`TakeRelay` is this node's part as a relay (forward a peer's take to
the owner, the owner's answer back; p2pd/market/relay.py holds the rules)
and, for our own takes, picks the peers to relay through. The owner's and
the taker's parts live with the rest of a take (p2pd/roles/trading.py,
p2pd/roles/taking.py).
"""

from __future__ import annotations

import hashlib

from p2pd.errors import PeerGone
from p2pd.market.relay import RelayTable
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from protocol import RelayedAnswer, RelayedTake

RELAY_FANOUT = 3
"""Peers a take without a direct session is sent through at once."""


class TakeRelay:
    """Forwards relayed takes and their answers for our peers; bounded by :class:`RelayTable`.

    ``enabled`` False (``[trading] relay = false``) forwards nothing; our
    own takes may still be relayed by others.
    """

    def __init__(self, node: Node, *, enabled: bool = True) -> None:
        self.node = node
        self.enabled = enabled
        self.table = RelayTable()
        self.counters = node.counters

    async def forward_take(self, conn: PeerConnection, msg: RelayedTake) -> None:
        """A peer's take for another member: forward it once if we can reach the owner."""
        why = "disabled" if not self.enabled else self.table.admit(msg, conn.member_id, self.node.clock.now())
        if why is not None:
            self.counters[f"relay_dropped:{why}"] += 1
            return
        owner = self.node.sessions.get(msg.owner)
        if owner is None:
            # Not ours to reach either; the taker tries other peers. Forget it
            # so its slot in the table is free again.
            self.table.forwarded.pop(msg.terms.trade_id, None)
            self.counters["relay_dropped:no_session"] += 1
            return
        self.counters["relay_takes"] += 1
        forwarded = RelayedTake(msg.owner, msg.hops - 1, msg.credential, msg.terms, msg.taker_sig)
        # In a task of the owner's session: a slow owner must not stall the
        # taker's session (whose receive loop runs this handler).
        self.node.spawn_for(owner, _send_quietly, owner, forwarded)

    async def forward_answer(self, conn: PeerConnection, msg: RelayedAnswer) -> bool:
        """An owner's answer to a take we forwarded: pass it back. False if it is no such answer."""
        taker = self.table.answer(msg, conn.member_id, self.node.clock.now())
        if taker is None:
            return False
        back = self.node.sessions.get(taker)
        if back is None:
            self.counters["relay_dropped:taker_gone"] += 1
            return True
        self.counters["relay_answers"] += 1
        self.node.spawn_for(back, _send_quietly, back, msg)
        return True

    def relays_for(self, owner: str, trade_id: bytes) -> list[PeerConnection]:
        """Up to :data:`RELAY_FANOUT` of our sessions to send a take for ``owner`` through.

        Which ones varies with the trade (a hash of its id and the peer), so
        the takes of a node spread over its peers instead of always loading
        the same one.
        """
        peers = [c for m, c in self.node.sessions.items() if m != owner]
        peers.sort(key=lambda c: hashlib.blake2b(trade_id + c.member_id.encode(), digest_size=8).digest())
        return peers[:RELAY_FANOUT]


async def _send_quietly(conn: PeerConnection, msg: RelayedTake | RelayedAnswer) -> None:
    try:
        await conn.send(msg)
    except PeerGone:
        pass  # the taker retries; an answer lost here is sent again on its retry
