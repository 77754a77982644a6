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

# Limits of docs/protocol.md section 5.3, checked by a structural scan of the
# bytes *before* msgpack allocates anything (see :func:`_scan`). A frame is
# already capped at 65,535 bytes by the framing layer.
MAX_STR = 4096
MAX_BIN = 65535
# The largest array any record of the specification holds (a RevocationList's
# member ids); tests/protocol/test_canonical.py checks every schema fits.
MAX_ARRAY = 512
MAX_DEPTH = 16

_ALLOWED = (type(None), bool, int, str, bytes, list, tuple)

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# What the scan does with each type byte. _SKIP: bytes that follow the type
# byte of a fixed-size value (fixint, nil, bool, int8-64, fixstr). _BLOB:
# width of the length prefix of str8/16/32 and bin8/16/32, and its limit.
_SKIP: list[int | None] = [None] * 256
for _b in [*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3]:
    _SKIP[_b] = 0
for _b in range(0xA0, 0xC0):
    _SKIP[_b] = _b & 0x1F
for _b, _n in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
    _SKIP[_b] = _n
_BLOB = {0xD9: (1, MAX_STR), 0xDA: (2, MAX_STR), 0xDB: (4, MAX_STR),
         0xC4: (1, MAX_BIN), 0xC5: (2, MAX_BIN), 0xC6: (4, MAX_BIN)}


def _scan(data: bytes) -> None:
    """Check the msgpack structure of ``data`` against section 5.3, allocating nothing.

    msgpack-python pre-allocates a list of the *claimed* length of every array
    header it meets, so a few kilobytes of nested ``dc 40 00`` headers would
    cost tens of megabytes before any limit applied. This walk reads only
    type bytes and length prefixes: it refuses maps, floats, ext types,
    nesting deeper than :data:`MAX_DEPTH`, arrays over :data:`MAX_ARRAY`,
    over-long str/bin, truncation and trailing bytes. After it passes, the
    objects msgpack builds are the ones really present in ``data`` (each at
    least one byte), so decoding costs a small constant multiple of the
    input's size.
    """
    size = len(data)
    pos = 0
    skip_table = _SKIP
    # Items still to read at each open array; the bottom entry is the single
    # top-level value. len(pending) is the depth of the next item read.
    pending = [1]
    while pending:
        left = pending[-1]
        if left == 0:
            pending.pop()
            continue
        pending[-1] = left - 1
        if pos >= size:
            raise DecodeError("truncated msgpack")
        head = data[pos]
        skip = skip_table[head]
        if skip is not None:
            pos += 1 + skip
            continue
        if head == 0xC4 or head == 0xD9:  # bin8 / str8: keys, signatures, ids
            if pos + 1 >= size:
                raise DecodeError("truncated msgpack")
            pos += 2 + data[pos + 1]
            continue
        pos += 1
        if 0x90 <= head <= 0x9F:
            count = head & 0x0F
        elif head == 0xDC or head == 0xDD:
            width = 2 if head == 0xDC else 4
            count = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif head in _BLOB:
            width, limit = _BLOB[head]
            length = int.from_bytes(data[pos : pos + width], "big")
            if length > limit:
                raise DecodeError(f"str or bin of {length} bytes exceeds {limit}")
            pos += width + length
            continue
        elif head == 0xCA or head == 0xCB:
            raise DecodeError("floats are not allowed on the wire")
        elif 0x80 <= head <= 0x8F or head == 0xDE or head == 0xDF:
            raise DecodeError("maps are not allowed on the wire")
        else:  # ext types (c7-c9, d4-d8) and the never-used c1
            raise DecodeError(f"msgpack type byte 0x{head:02x} is not allowed on the wire")
        # An array header.
        if len(pending) > MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH} arrays")
        if count > MAX_ARRAY:
            raise DecodeError(f"array of {count} elements exceeds {MAX_ARRAY}")
        if count > size - pos:  # every element takes at least one byte
            raise DecodeError("truncated msgpack")
        if count:
            pending.append(count)
    if pos > size:
        raise DecodeError("truncated msgpack")
    if pos < size:
        raise DecodeError("trailing bytes after message")


def _check(value: Any, depth: int = 0) -> None:
    if depth >= MAX_DEPTH:
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


def unpack(data: bytes) -> list[Any]:
    """Decode one canonical array from ``data`` with hard limits.

    Raises :class:`DecodeError` for anything that is not exactly one msgpack
    array within the limits of docs/protocol.md section 5.3 (trailing bytes,
    maps, floats, ext types, invalid UTF-8, too deep, too long). The limits
    are checked on the raw bytes before anything is allocated (:func:`_scan`).
    """
    _scan(data)
    if data[0] not in _ARRAY_HEADS:
        raise DecodeError("top-level value is not an array")
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
        )
    except (ValueError, msgpack.UnpackException, UnicodeDecodeError, TypeError) as exc:
        # After the scan only invalid UTF-8 in a str is left to fail here.
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from exc
    return value  # type: ignore[no-any-return]


_ARRAY_HEADS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


def describe(value: Any) -> str:
    """A short, bounded description of a decoded value for an error text.

    Error texts reach the log and, in a Close, the peer: they never quote
    more than a few bytes of what a peer sent. Ints (at most 20 digits after
    decoding) are shown; a str is cut and escaped; anything else is named by
    its type only (``repr`` of a deeply nested list could even recurse past
    Python's limit).
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return repr(value[:32]) + ("..." if len(value) > 32 else "")
    return f"<{type(value).__name__}>"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")

