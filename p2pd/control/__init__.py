"""The local control API: a JSON-RPC 2.0 server on a Unix socket, and its methods.

``server`` is the generic server (framing, limits, access rule, errors); it
imports only the shared modules. ``methods`` (built-in: status, peers,
reload) and ``trading`` (orders, trades, receipts, statements) bind it to a
running daemon through ``p2pd.context``.

May import: ``context``, ``roles``, ``net``, ``market``, ``config`` and the
shared modules. Never ``components``, ``sim`` or ``cli``.
"""
