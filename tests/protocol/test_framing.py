"""Length-prefixed framing (docs/protocol.md section 3)."""

from __future__ import annotations

import pytest

from protocol import FrameDecoder, LocalProtocolError, Reason, RemoteProtocolError, frame


def test_frame_prefix() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"x" * 65535)[:2] == b"\xff\xff"


@pytest.mark.parametrize("size", [0, 65536])
def test_frame_refuses_bad_sizes(size: int) -> None:
    with pytest.raises(LocalProtocolError):
        frame(b"x" * size)


def test_split_and_coalesced_input() -> None:
    dec = FrameDecoder(1024)
    data = frame(b"one") + frame(b"two")
    for byte in data[:-1]:
        dec.feed(bytes([byte]))
    assert dec.next_frame() == b"one"
    assert dec.next_frame() is None
    dec.feed(data[-1:])
    assert dec.next_frame() == b"two"
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_limit_checked_on_prefix_alone() -> None:
    dec = FrameDecoder(32)
    dec.feed(b"\x00\x21")
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    ok = FrameDecoder(32)
    ok.feed(b"\x00\x20")
    assert ok.next_frame() is None


def test_zero_length_frame() -> None:
    dec = FrameDecoder(65535)
    dec.feed(b"\x00\x00")
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.reason is Reason.PROTOCOL_ERROR
