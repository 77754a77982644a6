"""Field specs and Record decoding (docs/protocol.md sections 5.3, 6.1)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from protocol import DecodeError, LocalProtocolError, pack
from protocol.schema import Bin, Bool, Fixed, Int, ListOf, OneOf, Optional, Record, Str, f


@dataclass(frozen=True)
class Sample(Record):
    n: int = f(Int(1, 10))
    flag: bool = f(Bool())
    name: str = f(Str(8, r"[a-z]+", min_len=1))
    key: bytes = f(Fixed(4))
    kind: str = f(OneOf(("a", "b")))
    maybe: bytes | None = f(Optional(Bin(0, 2)))
    items: tuple[int, ...] = f(ListOf(Int(), max_len=2))


GOOD = [5, True, "abc", b"1234", "a", None, [1, 2]]


def test_roundtrip() -> None:
    obj = Sample.decode(pack(GOOD))
    assert obj == Sample(5, True, "abc", b"1234", "a", None, (1, 2))
    assert obj.encode() == pack(GOOD)


@pytest.mark.parametrize(
    ("index", "bad"),
    [
        (0, 0), (0, 11), (0, True), (0, "5"),
        (1, 1),
        (2, ""), (2, "ABC"), (2, "abcdefghi"), (2, b"abc"),
        (3, b"123"), (3, b"12345"), (3, "1234"),
        (4, "c"), (4, 1),
        (5, b"123"),
        (6, [1, 2, 3]), (6, [True]), (6, 1),
    ],
)
def test_field_violations(index: int, bad: object) -> None:
    value = list(GOOD)
    value[index] = bad
    with pytest.raises(DecodeError, match=list(Sample.__dataclass_fields__)[index]):
        Sample.decode(pack(value))


@pytest.mark.parametrize("value", [GOOD[:-1], GOOD + [1]])
def test_wrong_field_count(value: list[object]) -> None:
    with pytest.raises(DecodeError, match="expected 7 fields"):
        Sample.decode(pack(value))


def test_validate_own_objects() -> None:
    Sample(5, True, "abc", b"1234", "a", None, ()).validate()
    with pytest.raises(LocalProtocolError):
        Sample(50, True, "abc", b"1234", "a", None, ()).validate()


def test_str_limit_counts_utf8_bytes() -> None:
    spec = Str(4)
    assert spec.load("éé", "x") == "éé"
    with pytest.raises(DecodeError):
        spec.load("ééé", "x")
