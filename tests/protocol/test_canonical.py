"""Canonical msgpack rules (docs/protocol.md section 5)."""

from __future__ import annotations

import contextlib
import tracemalloc

import pytest
from p2pd_test_helpers import Community

from protocol import (
    MESSAGE_TYPES,
    DecodeError,
    LocalProtocolError,
    Reason,
    decode_message,
    digest,
    pack,
    signed_bytes,
    unpack,
)
from protocol.canonical import MAX_ARRAY, MAX_DEPTH
from protocol.schema import ListOf, Nested, Optional, Record, Spec


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ([0], "9100"),
        ([127], "917f"),
        ([128], "91cc80"),
        ([-1], "91ff"),
        ([-33], "91d0df"),
        ([2**32], "91cf0000000100000000"),
        (["a"], "91a161"),
        ([b"\x01"], "91c40101"),
        ([None, True, False], "93c0c3c2"),
        ([[1, 2]], "91920102"),
    ],
)
def test_shortest_encodings(value: list[object], wire: str) -> None:
    assert pack(value).hex() == wire
    assert unpack(bytes.fromhex(wire)) == value


def test_encoding_is_deterministic() -> None:
    com = Community()
    cred = com.member("alice").credential
    assert cred.encode() == cred.encode()
    again = type(cred).decode(cred.encode())
    assert again.encode() == cred.encode()
    assert again.credential_id == cred.credential_id == digest(cred.encode())


def test_signed_bytes_prefix_domain() -> None:
    assert signed_bytes("d", [1, b"x"]) == pack(["d", 1, b"x"])


@pytest.mark.parametrize("bad", [1.5, {"a": 1}, {}, object(), 2**64, -(2**63) - 1])
def test_pack_refuses_non_canonical_values(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        pack([bad])


def test_pack_refuses_deep_nesting() -> None:
    value: list[object] = []
    for _ in range(20):
        value = [value]
    with pytest.raises(LocalProtocolError):
        pack(value)


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("91cb3ff8000000000000", "float64"),
        ("91ca3fc00000", "float32"),
        ("9181a16101", "map"),
        ("81a16101", "top-level map"),
        ("01", "top-level int"),
        ("910100", "trailing bytes"),
        ("9201", "truncated"),
        ("", "empty"),
        ("91a2c328", "invalid utf-8"),
        ("91d40100", "fixext"),
        ("91d6ff00000000", "timestamp ext"),
        ("c1", "never-used byte"),
    ],
)
def test_unpack_rejects(wire: str, why: str) -> None:
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex(wire))


def test_unpack_rejects_nested_float() -> None:
    with pytest.raises(DecodeError):
        unpack(pack([[[1]]])[:-1] + b"\xcb" + bytes(8))


def test_unpack_limits() -> None:
    assert unpack(pack(["x" * 4096]))
    with pytest.raises(DecodeError):
        unpack(pack(["x" * 4097]))
    assert unpack(pack([b"x" * 65535]))
    with pytest.raises(DecodeError):
        unpack(b"\x91\xc6" + (65536).to_bytes(4, "big") + bytes(65536))
    assert len(unpack(pack([0] * MAX_ARRAY))) == MAX_ARRAY
    with pytest.raises(DecodeError):
        unpack(b"\xdd" + (MAX_ARRAY + 1).to_bytes(4, "big") + bytes(MAX_ARRAY + 1))


def test_unpack_rejects_too_deep() -> None:
    with pytest.raises(DecodeError):
        unpack(b"\x91" * 40 + b"\x90")


def test_nesting_limit_is_exactly_sixteen_arrays() -> None:
    assert unpack(b"\x91" * (MAX_DEPTH - 1) + b"\x90")
    with pytest.raises(DecodeError, match="nesting"):
        unpack(b"\x91" * MAX_DEPTH + b"\x90")


def test_every_schema_fits_the_decoder_limits() -> None:
    # MAX_ARRAY and MAX_DEPTH follow the specification's real bounds: every
    # record any message can carry fits them, with the message's own array.
    def walk(spec: Spec, depth: int) -> tuple[int, int]:
        if isinstance(spec, Nested):
            return record(spec.cls, depth + 1)
        if isinstance(spec, ListOf):
            inner_len, inner_depth = walk(spec.inner, depth + 1)
            return max(spec.max_len, inner_len), inner_depth
        if isinstance(spec, Optional):
            return walk(spec.inner, depth)
        return 0, depth

    def record(cls: type[Record], depth: int) -> tuple[int, int]:
        specs = cls._specs()
        found = [walk(spec, depth) for _, spec in specs]
        return (max([len(specs) + 2, *(n for n, _ in found)]),
                max([depth, *(d for _, d in found)]))

    widest, deepest = 0, 0
    for cls in MESSAGE_TYPES.values():
        n, d = record(cls, 1)
        widest, deepest = max(widest, n), max(deepest, d)
    assert widest == MAX_ARRAY  # the limit is the real bound, not a guess
    assert deepest <= MAX_DEPTH


@pytest.mark.parametrize("depth", [920, 990, 1023, 2000])
def test_deeply_nested_message_is_a_decode_error(depth: int) -> None:
    # Issue 17: `92 01` then `91` x depth then `90` used to end in RecursionError
    # while building the error text, which stopped the daemon.
    data = b"\x92\x01" + b"\x91" * depth + b"\x90"
    with pytest.raises(DecodeError) as info:
        decode_message(data)
    assert info.value.reason is Reason.INVALID_MESSAGE
    assert len(str(info.value)) < 100


@pytest.mark.parametrize("junk", [[[[[]]]], "x" * 5000, b"y" * 3000, [1] * 400])
def test_error_texts_quote_little_of_the_input(junk: object) -> None:
    for data in (pack([1, junk], check=False), pack([junk, 2], check=False)):
        with pytest.raises(DecodeError) as info:
            decode_message(data)
        assert len(str(info.value)) < 100


def test_claimed_array_lengths_allocate_nothing() -> None:
    # Issue 17: 3 KB of array16 headers each claiming 16,384 items made msgpack
    # pre-allocate ~67 MB. Decoding any input now costs a small multiple of it.
    for data in (b"\xdc\x40\x00" * 1000, b"\xdc\x02\x00" * 1000, b"\x92\x01" + b"\xdc\x01\xff" * 20,
                 b"\xdc\x01\xff" + b"\x90" * 511):
        tracemalloc.start()
        try:
            with contextlib.suppress(DecodeError):
                decode_message(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 100 * len(data) + 10_000, (data[:6].hex(), peak)


def test_unpack_rejects_empty_map() -> None:
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex("9180"))


def test_unpack_rejects_empty_ext() -> None:
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex("91c70005"))
