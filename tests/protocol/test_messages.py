"""Message envelope and session messages (docs/protocol.md section 7)."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import Community

from protocol import (
    MESSAGE_TYPES,
    Close,
    DecodedMemo,
    DecodeError,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    Reason,
    Rekey,
    decode_message,
    encode_message,
    install_decoded_memo,
    pack,
    register,
)


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (Ping(1), "93010201"),
        (Pong(4294967295), "930103ceffffffff"),
        (Close(0, "bye"), "94010400a3627965"),
        (Rekey(), "920105"),
    ],
)
def test_session_message_encodings(msg: object, wire: str) -> None:
    assert encode_message(msg).hex() == wire  # type: ignore[arg-type]
    assert decode_message(bytes.fromhex(wire)) == msg


def test_hello_wraps_credential() -> None:
    cred = Community().member("alice").credential
    data = encode_message(Hello(cred))
    assert data == b"\x93\x01\x01" + cred.encode()
    assert decode_message(data) == Hello(cred)


def test_type_codes() -> None:
    assert {code: cls.__name__ for code, cls in MESSAGE_TYPES.items() if code <= 5} == {
        1: "Hello", 2: "Ping", 3: "Pong", 4: "Close", 5: "Rekey",
    }


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unsupported_version(version: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(pack([version, 2, 1]))
    assert info.value.reason is Reason.UNSUPPORTED_VERSION


def test_bool_version_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(bytes.fromhex("93c30205"))
    assert info.value.reason is Reason.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    "value",
    [[1, 250], [1, True, 1], [1, "2", 1], [1, None], [1], [], [1, 2], [1, 2, 1, 2], [1, 2, -1],
     [1, 2, 2**32], [1, 2, True], [1, 4, 256, ""], [1, 4, 0, "x" * 201], [1, 1, [1]]],
)
def test_invalid_messages(value: list[object]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(pack(value))
    assert info.value.reason is Reason.INVALID_MESSAGE


@pytest.mark.parametrize("wire", ["93010201c0", "9301cb3ff000000000000000", "8101", ""])
def test_non_canonical_input_is_decode_error(wire: str) -> None:
    with pytest.raises(DecodeError):
        decode_message(bytes.fromhex(wire))


def test_close_message_limit_is_in_bytes() -> None:
    decode_message(pack([1, 4, 0, "é" * 100]))
    with pytest.raises(DecodeError):
        decode_message(pack([1, 4, 0, "é" * 101]))


def test_register_refuses_duplicate_code() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    from protocol import Message

    @dataclass(frozen=True)
    class Impostor(Message):
        TYPE: ClassVar[int] = 2

    with pytest.raises(LocalProtocolError):
        register(Impostor)
    assert MESSAGE_TYPES[2] is Ping


def test_decoded_memo_shares_successes_only() -> None:
    """The simulator's memo: the same bytes give the same message; bad bytes fail every time."""
    memo = DecodedMemo(max_entries=2)
    previous = install_decoded_memo(memo)
    try:
        ping = encode_message(Ping(7))
        first = decode_message(ping)
        assert decode_message(bytearray(ping)) is first == Ping(7)
        assert (memo.misses, memo.hits) == (1, 1)
        for bad in (bytes.fromhex("93010202"[:-2]) + b"\xc1", bytes.fromhex("9301ff"), bytes.fromhex("930201")):
            for _ in range(2):
                with pytest.raises(DecodeError):
                    decode_message(bad)
        assert memo.hits == 1 and memo.misses == 7
        # Bounded: the oldest is forgotten, and decoded again (equal, a new object) when met.
        decode_message(encode_message(Ping(8)))
        decode_message(encode_message(Ping(9)))
        again = decode_message(ping)
        assert again == first and again is not first and memo.misses == 10
    finally:
        install_decoded_memo(previous)
    assert install_decoded_memo(None) is None  # a daemon decodes everything
    # Frames over max_bytes are decoded every time and not kept.
    small = DecodedMemo(max_bytes=8)
    install_decoded_memo(small)
    try:
        long = encode_message(Close(0, "a reason longer than eight bytes"))
        assert decode_message(long) is not decode_message(long)
        assert (small.hits, small.misses) == (0, 0) and decode_message(ping) is decode_message(ping)
    finally:
        install_decoded_memo(None)
