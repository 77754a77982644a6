"""The simulator: many real nodes in one process, for tests and researchers.

``community`` (nodes, households, topology), ``build`` (``open_community``),
``scenarios`` (S2-S4), ``attacks*``, ``day`` (a community's run, before the accounts),
``run`` (a whole run and its report), ``markets`` (neighbourhood markets on every core),
``workers``/``worker`` (the loopback TCP mode),
``report``, ``plot``, ``quiet`` (waiting for a condition without polling).

May import: everything but ``cli``; only ``cli`` (and tests and benchmarks) import it.
"""
