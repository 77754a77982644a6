"""Canonical encoding of everything that is signed or hashed.

Rule (docs/protocol.md, "Canonical encoding"): a signed object is a msgpack
*array* whose first element is a domain string such as ``"p2pd/order/1"``,
followed by the object's fields in their documented order. Only these msgpack
types appear: nil, bool, int (always in its shortest encoding), str (UTF-8),
bin, and array. No maps, no floats, no ext types. msgpack's packer always picks
the shortest integer and length encodings, so equal values give equal bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from protocol.errors import DecodeError, LocalProtocolError

# Limits applied before msgpack allocates anything. A frame is already capped
# at 65,535 bytes by the framing layer; these caps keep one frame's worth of
# input from expanding into much more memory than it occupies.
MAX_STR = 4096
MAX_BIN = 65535
MAX_ARRAY = 16384

_ALLOWED = (type(None), bool, int, str, bytes, list, tuple)

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def _check(value: Any, depth: int = 0) -> None:
    if depth > 16:
        raise LocalProtocolError("canonical value nested too deeply")
    if isinstance(value, float) or not isinstance(value, _ALLOWED):
        raise LocalProtocolError(f"type {type(value).__name__} is not canonical")
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            raise LocalProtocolError("integer out of msgpack range")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)


def pack(value: Sequence[Any], *, check: bool = True) -> bytes:
    """Encode ``value`` (an array of canonical types) to canonical bytes.

    Raises :class:`LocalProtocolError` if a non-canonical type (float, dict,
    ...) is present: that is a bug in our own code, not bad input.
    ``check=False`` skips that walk for values that come from a record
    already validated against its schema (the schema admits only canonical
    types), which is the hot path of every message and signature.
    """
    if check:
        _check(value)
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def signed_bytes(domain: str, fields: Sequence[Any]) -> bytes:
    """The exact bytes a signature covers: ``pack([domain, *fields])``.

    ``fields`` come from a schema-checked record (see :func:`pack`).
    """
    return pack([domain, *fields], check=False)


def unpack(data: bytes, *, reject_floats: bool = True) -> list[Any]:
    """Decode one canonical array from ``data`` with hard limits.

    Raises :class:`DecodeError` for anything that is not exactly one msgpack
    array within the limits (trailing bytes, maps, floats, ext types, invalid
    UTF-8, too deep, too long). ``reject_floats=False`` leaves floats to the
    schema layer, for callers that validate every field right after
    (every field spec refuses floats).
    """
    try:
        value = msgpack.unpackb(
            data,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_BIN,
            max_array_len=MAX_ARRAY,
            max_map_len=0,
            max_ext_len=0,
            object_pairs_hook=_no_maps,
            ext_hook=_no_ext,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after message") from exc
    except (ValueError, msgpack.UnpackException, UnicodeDecodeError, TypeError) as exc:
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from exc
    except RecursionError as exc:  # pragma: no cover - StackError is a ValueError
        raise DecodeError("nesting too deep") from exc
    if not isinstance(value, list):
        raise DecodeError("top-level value is not an array")
    if reject_floats:
        _reject_floats(value)
    return value


def _no_maps(pairs: Any) -> Any:
    # max_map_len=0 still admits an empty map; the spec admits none.
    raise DecodeError("maps are not allowed on the wire")


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError("ext types are not allowed on the wire")


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _reject_floats(value: Any, depth: int = 0) -> None:
    if isinstance(value, float):
        raise DecodeError("floats are not allowed on the wire")
    if isinstance(value, list):
        if depth > 16:
            raise DecodeError("nesting too deep")
        for item in value:
            _reject_floats(item, depth + 1)
