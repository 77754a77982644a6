"""Target: ``protocol.decode_message`` on any plaintext, every message type.

Documented outcome: a ``Message`` or ``DecodeError`` (protocol/messages.py),
whose text stays short whatever the input (issue 17: it used to embed, and
``repr`` a 990-deep list).
"""

from __future__ import annotations

from typing import Any

from p2pd_fuzz_engine import doc_examples  # type: ignore[import-not-found]

from protocol import MESSAGE_TYPES, DecodeError, decode_message, pack
from protocol.schema import Bin, Int, ListOf, Nested, OneOf, Optional, Record, Spec, Str


def target(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError as exc:
        if len(str(exc)) > 300:
            raise AssertionError(f"error text of {len(str(exc))} characters") from exc


def _example(spec: Spec) -> Any:
    """A value of the right shape for ``spec`` (not always valid: a start point)."""
    match spec:
        case Int(lo=lo):
            return lo
        case Bin(min_len=n):
            return bytes(n)
        case Str(min_len=n):
            return "a" * max(n, 1)
        case OneOf(choices=choices):
            return choices[0]
        case Optional():
            return None
        case ListOf(inner=inner):
            return [_example(inner)]
        case Nested(cls=cls):
            return _record(cls)
    return None


def _record(cls: type[Record]) -> list[Any]:
    return [_example(spec) for _, spec in cls._specs()]


def seeds() -> list[bytes]:
    found = list(doc_examples().values())
    found += [pack([1, code, *_record(cls)], check=False) for code, cls in sorted(MESSAGE_TYPES.items())]
    found.append(b"\x92\x01" + b"\x91" * 990 + b"\x90")  # issue 17, finding 1
    found.append(b"\xdc\x40\x00" * 1000)  # issue 17, finding 2
    return found

