"""Sessions and the community network, on trio.

The node and its peer connections (``node``, ``peer``), the TCP listener and
dialler (``listener``), who gets in first before authentication
(``admission``: members' known hosts), peer discovery, gossip fan-out,
policing (rate limits, congestion feedback, bans, the strangers' handshake
budget), revocation lists, and key/credential files (``identity``).

May import: ``market``, ``protocol``, ``store`` and the shared modules
(``errors``, ``log``, ``clock``, ``events``, ``storage``). Never ``roles``
or anything above it (tests/test_layering.py).
"""
