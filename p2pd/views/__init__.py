"""Read-only views of a running node, for the household and its operator.

* ``summary``: the household's view (trades, savings, the trading slot,
  peers, meter) gathered from the store and the node;
* ``home_assistant`` (no I/O) and ``ha_bridge`` (trio): the same as Home
  Assistant sensors over MQTT (``paho_trio``);
* ``dashboard``: a small ASGI app, GET only: the household's page and
  ``/metrics``; ``http`` serves it with hypercorn's trio worker;
* ``metrics``: Prometheus metrics, rendered with prometheus-client from a
  registry of our own at each scrape.

Nothing here changes the node's state. May import ``context``, ``control``,
``roles``, ``net``, ``market``, ``config``, ``notify`` and the shared
modules; the components (``mqtt``, ``dashboard``) import this room, never the
other way round.
"""
