"""Sessions and the community network, on trio.

The node and its peer connections (``node``, ``peer``), the TCP listener and
dialler (``listener``), peer discovery, gossip fan-out, policing (rate limits,
congestion feedback, bans), revocation lists, and key/credential files
(``identity``).

May import: ``market``, ``protocol``, ``store`` and the shared modules
(``errors``, ``log``, ``clock``, ``events``, ``storage``). Never ``roles``
or anything above it (tests/test_layering.py).
"""
