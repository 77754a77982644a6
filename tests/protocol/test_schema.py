"""Field specs and Record decoding (docs/protocol.md sections 5.3, 6.1)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from protocol import DecodeError, LocalProtocolError, pack
from protocol.schema import Bin, Bool, Fixed, Int, ListOf, Nested, OneOf, Optional, Record, Str, f


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


# --- decode once -------------------------------------------------------------------


@dataclass(frozen=True)
class Outer(Record):
    inner: Sample = f(Nested(Sample))
    extra: int = f(Int(0, 3))


def test_decoded_records_are_known_valid_and_not_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    outer = Outer.decode(pack([GOOD, 1]))
    assert outer._valid and outer.inner._valid
    walked: list[str] = []
    real = Int.check

    def counting(self: Int, value: object, name: str) -> None:
        walked.append(name)
        real(self, value, name)

    monkeypatch.setattr(Int, "check", counting)
    outer.check_spec()
    assert walked == []  # decoded: nothing to check
    built = Outer(outer.inner, 2)
    built.check_spec()
    assert walked == ["Outer.extra"]  # only the new field; the decoded inner record is trusted
    built.check_spec()
    assert walked == ["Outer.extra"]  # and once checked, not again


def test_check_spec_refuses_what_a_decoder_would() -> None:
    bad_inner = Sample(11, True, "abc", b"1234", "a", None, (1, 2))  # n over 10
    with pytest.raises(DecodeError, match=r"Outer.inner.n"):
        Outer(bad_inner, 0).check_spec()
    good = Sample.decode(pack(GOOD))
    with pytest.raises(DecodeError, match=r"Outer.extra"):
        Outer(good, 4).check_spec()
    with pytest.raises(DecodeError, match=r"items\[1\]"):
        Sample(5, True, "abc", b"1234", "a", None, (1, -1)).check_spec()
    assert not Outer(bad_inner, 0)._valid


def test_to_wire_gives_a_fresh_list_and_replace_forgets_the_cache() -> None:
    import dataclasses

    obj = Sample.decode(pack(GOOD))
    wire = obj.to_wire()
    wire[0] = 99
    assert obj.to_wire()[0] == 5 and obj.encode() == pack(GOOD)
    other = dataclasses.replace(obj, n=6)
    assert other.to_wire()[0] == 6 and not other._valid


@dataclass(frozen=True)
class Cached(Record):
    DECODED_CACHE = 2
    n: int = f(Int(1, 10))
    name: str = f(Str(8, r"[a-z]+", min_len=1))


def test_decoded_cache_returns_the_same_object_and_still_refuses_bad_input() -> None:
    a = Cached.from_wire([1, "a"])
    assert Cached.from_wire([1, "a"]) is a
    with pytest.raises(DecodeError):
        Cached.from_wire([11, "a"])
    with pytest.raises(DecodeError):
        Cached.from_wire([1, [1]])  # unhashable: decoded the slow way, and refused
    Cached.from_wire([2, "b"])
    Cached.from_wire([3, "c"])  # evicts the oldest
    assert Cached.from_wire([1, "a"]) is not a and Cached.from_wire([1, "a"]) == a
