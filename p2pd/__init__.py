"""p2pd, the peer-to-peer electricity trading daemon, in rooms.

Imports flow downwards only (tests/test_layering.py checks it):

* ``market/``: the trading rules, sans-IO like ``protocol/``: the order book,
  the one trade state machine, the broker's auction and its checks,
  delegations, settlement, disputes, forecasts, the receipt log. No trio, no
  clock reads, no store, no randomness: ``now`` and random bytes come in as
  arguments. Imports only ``protocol`` and itself.
* ``net/``: sessions on trio: the node, peer pumps, listener and dialer,
  discovery, gossip, policing, revocations, identities. Imports ``market``.
* ``roles/``: thin trio pumps around ``market/`` for each role: trading (S1),
  broker, representative, agent, replication, the receipt writer, fallback.
  Imports ``net`` and ``market``; never the rooms above.
* ``control/``: the JSON-RPC control server (``server.py`` knows nothing of
  p2pd) and its methods.
* ``views/``: read-only views of a running node for the household and its
  operator: the household's summary, Home Assistant over MQTT, the web
  dashboard and the Prometheus metrics. Imports ``context``, ``control``
  and the rooms below.
* ``components/``: one per role, each owning its configuration section; the
  daemon runs the explicit list in ``components/__init__.py``, whose
  sections callers pass to ``config.load_config``.
* ``daemon.py``: ``p2pd run``: store, node, listener, components, control
  socket, meter, signals, systemd notification.
* ``sim/``: the simulator (many real nodes in one process); only ``cli/``
  imports it.
* ``cli/``: the ``p2pd`` and ``p2pctl`` commands.

Shared by all: ``errors``, ``log``, ``clock``, ``events``, ``storage`` (store
calls in a worker thread), ``config`` (the file: the core sections, and the
``Table``/``Section`` helpers components describe theirs with; imports
``market`` for the default tariffs and ``protocol`` for the wire's bounds,
never the components), ``context`` (what a running daemon gives components),
``notify``.
"""
