"""Who gets in first before authentication: hosts where members were seen.

Under a handshake flood (docs/protocol.md §13.7, "Under load") the node
cannot tell an honest stranger from an attacker before the handshake, but it
does know where its members are: the addresses of recent sessions, members'
announced addresses and the configured static peers. Connections from those
*known hosts* bypass the node-wide budget for strangers' handshakes
(:class:`p2pd.net.policing.Policer`) and are never evicted from a handshake
slot by a stranger. They still obey the per-host connection rate.

Only authenticated sources add hosts: a session that completed, a signed
announcement, the operator's configuration. A stranger cannot make its own
address known without becoming a member first.
"""

from __future__ import annotations

from collections import OrderedDict


def host_of(address: str) -> str:
    """``"10.0.0.1:5"`` -> ``"10.0.0.1"``, ``"[::1]:5"`` -> ``"::1"``, else unchanged."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


class KnownHosts:
    """Hosts members were seen at, least recently seen forgotten first."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def note(self, host: str, now: float) -> None:
        """Remember ``host`` (seen at ``now``), refreshing it if known."""
        if not host:
            return
        self._seen[host] = now
        self._seen.move_to_end(host)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def __contains__(self, host: object) -> bool:
        return host in self._seen

    def __len__(self) -> int:
        return len(self._seen)
