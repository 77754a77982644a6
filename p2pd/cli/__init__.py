"""The ``p2pd`` (``main``) and ``p2pctl`` (``ctl``) commands.

The top room: may import every other room. Commands print one line for an
error the user can fix, never a traceback.
"""
