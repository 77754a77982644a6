"""S4 without its broker: fall back to direct S1 trading and lose nothing.

:class:`Fallback` places a member's energy with the broker while the broker is
reachable, and as an S1 order (p2pd/roles/trading.py) otherwise. When the broker's
session closes (a crash, a DoS), :meth:`Fallback.broker_lost`:

1. sends our countersignatures for matches the broker proposed but never
   finalised straight to the other agents (:meth:`BrokerClient.finish_directly`),
   so every match both sides signed still becomes a receipt on both sides;
2. re-offers what remains of our broker orders for slots whose gate is still
   open as S1 orders, so the energy is still traded.
"""

from __future__ import annotations

from collections import Counter

from p2pd.errors import TradeError
from p2pd.net.peer import PeerConnection
from p2pd.roles.broker import BrokerClient
from p2pd.roles.trading import Market
from protocol import Reason


class Fallback:
    def __init__(self, client: BrokerClient, market: Market, broker: str) -> None:
        self.client = client
        self.market = market
        self.broker = broker
        self.broker_up = True
        self.counters: Counter[str] = Counter()
        client.node.on_close.append(self._on_close)

    async def _on_close(self, conn: PeerConnection) -> None:
        if conn.peer is not None and conn.peer.member_id == self.broker and self.broker_up:
            await self.broker_lost()

    async def place(self, side: str, slot_start: int, wh: int, price: int) -> str:
        """Offer ``wh`` for ``slot_start``: with the broker if it answers, else directly.

        Returns ``"broker"`` or ``"direct"``. Raises TradeError if both refuse.
        """
        if self.broker_up:
            order = self.client.make_order(side, slot_start, self.market.rules.slot_len, wh, price,
                                           expiry=slot_start - self.market.rules.gate_closure)
            try:
                await self.client.submit(self.broker, order)
                self.counters["placed_broker"] += 1
                return "broker"
            except TradeError as exc:
                if exc.reason not in (Reason.TIMEOUT, Reason.NOT_FOUND):
                    raise
                self.broker_up = False
                self.client.own.pop(order.order_id, None)
        await self.market.post(side, slot_start, wh, price)
        self.counters["placed_direct"] += 1
        return "direct"

    async def broker_lost(self) -> int:
        """Finish signed matches directly and re-offer the rest over S1; returns Wh re-offered."""
        self.broker_up = False
        self.counters["broker_lost"] += 1
        await self.client.finish_directly()
        now = self.market.now()
        moved = 0
        for own in list(self.client.own.values()):
            o = own.order
            if own.remaining <= 0 or o.principal != self.client.node.member_id:
                continue
            if now >= o.slot_start - self.market.rules.gate_closure:
                continue
            wh, own.remaining = own.remaining, 0  # no longer the broker's to fill
            try:
                await self.market.post(o.side, o.slot_start, wh, o.price)
                moved += wh
                self.counters["reoffered_direct"] += 1
            except TradeError:
                own.remaining = wh
        return moved
