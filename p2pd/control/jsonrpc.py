"""JSON-RPC 2.0 as the control socket speaks it: codes, errors, params, strict JSON.

The wire rules of docs/control-api.md: one JSON value per line; requests are
strict JSON (``NaN``, ``Infinity`` and numbers that overflow a float are
parse errors) and no reply ever holds them; error texts quote at most
:data:`SHOW_CHARS` characters of what the client sent. Knows nothing of p2pd
beyond its error classes (:data:`ERROR_CODES`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pd.errors import ConfigError, NotConnected, P2pdError, PeerGone

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application codes (-32000..-32099); stable, listed in docs/control-api.md.
APP_ERROR = -32000
NOT_CONNECTED_CODE = -32001
PEER_UNREACHABLE = -32002
CONFIG_INVALID = -32003
PERMISSION_DENIED = -32004
TOO_BUSY = -32005
REQUEST_TOO_LARGE = -32006

ERROR_CODES: list[tuple[type[Exception], int]] = [
    (NotConnected, NOT_CONNECTED_CODE),
    (PeerGone, PEER_UNREACHABLE),
    (ConfigError, CONFIG_INVALID),
    (P2pdError, APP_ERROR),
]
"""Exception class -> error code, first match wins; others may insert entries."""

MAX_REQUEST = 1 << 20
MAX_BATCH = 100
MAX_SUBSCRIPTIONS = 4
READ_CHUNK = 65536
# Arrays and objects inside each other in one request. json.loads stops near
# Python's recursion limit, but encoding the same value back (an echoed
# param, an error's data) runs deeper in a handler's task and could fail.
MAX_DEPTH = 64
# Characters of the client's text (a method or parameter name) quoted in a reply or log line.
SHOW_CHARS = 60
INTERNAL_ERRORS = "control_internal_errors"
"""Key of :attr:`ControlServer.counters` counting -32603 answers (bugs)."""


class RpcError(Exception):
    """Raised by handlers (and internally) to answer with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its JSON type and limits.

    ``type`` is one of ``str``, ``int`` (never bool), ``float`` (int accepted),
    ``bool``, ``list``, ``dict`` or a tuple of them. ``lo``/``hi`` bound ints
    and floats; ``max_len`` bounds strings and lists.
    """

    type: type | tuple[type, ...]
    required: bool = True
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    max_len: int | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = any(_is(value, t) for t in types)
        if not ok:
            names = " or ".join(_JSON_NAMES.get(t, t.__name__) for t in types)
            raise RpcError(INVALID_PARAMS, f"invalid params: {name} must be {names}, got {_json_type(value)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                raise RpcError(INVALID_PARAMS, f"invalid params: {name} must be in {self.lo}..{self.hi}")
        if self.max_len is not None and isinstance(value, (str, list)) and len(value) > self.max_len:
            raise RpcError(INVALID_PARAMS, f"invalid params: {name} longer than {self.max_len}")
        return value


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object", type(None): "null"}


JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "array", dict: "object", type(None): "null"}


def _is(value: Any, t: type) -> bool:
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


def _json_type(value: Any) -> str:
    for t in (bool, int, float, str, list, dict, type(None)):
        if isinstance(value, t):
            return _JSON_NAMES[t]
    return type(value).__name__


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    name: str
    func: Handler
    params: Mapping[str, Param]
    streaming: bool = False
    summary: str = ""


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name if isinstance(value.value, int) else value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(obj: Any) -> bytes:
    """One JSON line (with the trailing newline).

    Raises TypeError for a value it cannot convert, ValueError for NaN or
    infinity (not JSON) and RecursionError for a value nested too deeply.
    """
    return (json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=False)
            + "\n").encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError("number out of range")
    return value


def decode(line: bytes) -> Any:
    """Parse one request line as strict JSON.

    Raises :class:`RpcError`: PARSE_ERROR for anything that is not JSON
    (including ``NaN``, ``Infinity``, a number out of a float's range and
    integers of over 4,300 digits), INVALID_REQUEST for a value nested deeper
    than :data:`MAX_DEPTH`.
    """
    try:
        value = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RpcError(PARSE_ERROR, "parse error: invalid JSON") from exc
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= MAX_DEPTH:
                raise RpcError(INVALID_REQUEST, f"invalid request: nested deeper than {MAX_DEPTH}")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def cut(text: str) -> str:
    """Client-supplied text for a message: at most SHOW_CHARS characters, as a repr."""
    return repr(text) if len(text) <= SHOW_CHARS else repr(text[:SHOW_CHARS]) + "..."
