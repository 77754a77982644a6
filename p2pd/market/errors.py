"""Errors of the trading rules, split by who is at fault.

:class:`Refusal` is the rules saying no to a request: an order, a take, a
match or a submission breaks a rule (its ``reason`` is the wire reason code,
docs/protocol.md sections 12.4 and 15). Whether that is our user's fault or a
peer's depends on who made the request; the caller knows and tells them
(p2pd.errors.TradeRefused locally, a ``TradeRefused``/``AgentRefused``
message to a peer).
"""

from __future__ import annotations

from protocol import Reason


class MarketError(Exception):
    """Root of the errors p2pd.market raises on purpose."""


class Refusal(MarketError):
    """Raised when a request breaks a trading rule; ``reason`` says which.

    ``remaining_wh`` is set for INSUFFICIENT (what the order still holds).
    ``str()`` is a short message for people and for the wire (at most 200
    bytes are sent).
    """

    def __init__(self, reason: Reason, message: str, remaining_wh: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.remaining_wh = remaining_wh
