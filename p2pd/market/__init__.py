"""The trading rules, sans-IO: decisions in, decisions out.

Like ``protocol/`` (and h11, aioquic): no trio, no sockets, no clock reads,
no store, no randomness. Whatever needs the time or random bytes takes them
as arguments; whatever needs storage returns a decision the caller carries
out and reports back. Tests are plain synchronous pytest
(tests/p2pd/market/).

May import: ``protocol`` and this package only (tests/test_layering.py).
"""
