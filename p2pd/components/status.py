"""What every component shares: adding its part to the ``status`` control method."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from p2pd.control.server import ControlServer


def extend_status(server: ControlServer, key: str, part: Callable[[], Any]) -> None:
    """Make the ``status`` method's result also carry ``key: part()``."""
    method = server.methods["status"]
    inner = method.func

    async def status(**kwargs: Any) -> Any:
        result = inner(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return {**result, key: part()}

    server.methods["status"] = dataclasses.replace(method, func=status)
