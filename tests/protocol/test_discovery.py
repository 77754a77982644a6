"""AddressAnnouncement: wire form, signature domain, limits."""

from __future__ import annotations

import pytest

from protocol import (
    ADDRESS_DOMAIN,
    AddressAnnouncement,
    DecodeError,
    LocalProtocolError,
    SignatureError,
    SigningKey,
    decode_message,
    encode_message,
    unpack,
)


def test_roundtrip_and_signature() -> None:
    key = SigningKey.generate()
    ann = AddressAnnouncement.create(key, member_id="alice", host="192.0.2.1", port=7400, issued_at=1_800_000_000)
    wire = encode_message(ann)
    assert unpack(wire)[:4] == [1, 96, "alice", "192.0.2.1"]
    back = decode_message(wire)
    assert back == ann and back.CATEGORY == "gossip"
    back.verify(key.public)
    assert ADDRESS_DOMAIN == "p2pd/address/1"


def test_tampering_or_wrong_key_fails() -> None:
    key = SigningKey.generate()
    ann = AddressAnnouncement.create(key, member_id="alice", host="192.0.2.1", port=7400, issued_at=1)
    moved = AddressAnnouncement(ann.member_id, "198.51.100.7", ann.port, ann.issued_at, ann.signature)
    with pytest.raises(SignatureError):
        moved.verify(key.public)
    with pytest.raises(SignatureError):
        ann.verify(SigningKey.generate().public)


@pytest.mark.parametrize("host, port", [("bad host", 1), ("", 1), ("a" * 254, 1), ("h", 0), ("h", 70000)])
def test_invalid_fields_are_refused(host: str, port: int) -> None:
    with pytest.raises(LocalProtocolError):
        AddressAnnouncement.create(SigningKey.generate(), member_id="alice", host=host, port=port, issued_at=1)
    wire = encode_message(AddressAnnouncement("alice", "h", 1, 1, bytes(64)))
    tampered = wire.replace(b"\xa1h", b"\xa1 ")
    with pytest.raises(DecodeError):
        decode_message(tampered)
