"""Canonical msgpack rules (docs/protocol.md section 5)."""

from __future__ import annotations

import pytest

from protocol import DecodeError, LocalProtocolError, digest, pack, signed_bytes, unpack
from p2pd_test_helpers import Community


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
    assert len(unpack(pack([0] * 16384))) == 16384
    with pytest.raises(DecodeError):
        unpack(b"\xdd" + (16385).to_bytes(4, "big") + bytes(16385))


def test_unpack_rejects_too_deep() -> None:
    with pytest.raises(DecodeError):
        unpack(b"\x91" * 40 + b"\x90")


def test_unpack_rejects_empty_map() -> None:
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex("9180"))


def test_unpack_rejects_empty_ext() -> None:
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex("91c70005"))
