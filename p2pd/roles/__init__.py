"""Each role's trio pump around the rules in ``market/``.

``trading`` (S1 order book, takes and receipts), ``broker`` (S3/S4 auction
and the parties' side), ``representative`` (S2/S3), ``agent`` (automatic
trading), ``replication`` (receipt logs), ``receipt_writer`` (group commit),
``fallback`` (S4 without a broker), ``slot_phases``. A role's decisions live
in ``market/``; here are the awaits: sessions, timers, the store.

May import: ``net``, ``market``, ``config``, ``protocol``, ``store`` and the
shared modules. Never ``control``, ``components``, ``sim`` or ``cli``.
"""
