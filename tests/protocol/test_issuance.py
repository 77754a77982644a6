"""Pseudonym issuance messages and the issuer's wrapped epoch keys (docs/protocol.md 12.8)."""

from __future__ import annotations

import os

import pytest

from protocol import (
    MAX_ASK,
    DecodeError,
    EpochKey,
    PseudonymAsk,
    PseudonymGrant,
    PseudonymRefused,
    Reason,
    SigningKey,
    decode_message,
    encode_message,
    unwrap_epoch_private,
    wrap_epoch_private,
)
from protocol.blind_rsa import PrivateKey


def test_issuance_messages_round_trip_and_bound_the_batch() -> None:
    issuer = SigningKey.generate()
    rsa_key = PrivateKey.generate()
    key = EpochKey.create(issuer, community="c", epoch=20000, modulus=rsa_key.public.modulus(), quota=8)
    blinded = tuple(os.urandom(256) for _ in range(3))
    for msg in (PseudonymAsk(b"\x01" * 16, 20000, blinded), PseudonymAsk(b"\x01" * 16, 20000, ()),
                PseudonymGrant(b"\x01" * 16, key, blinded, 5),
                PseudonymRefused(b"\x01" * 16, Reason.RATE_LIMITED, "over quota")):
        assert decode_message(encode_message(msg)) == msg
    too_many = PseudonymAsk(b"\x01" * 16, 20000, (bytes(256),) * MAX_ASK).to_wire()
    too_many[2] = [bytes(256)] * (MAX_ASK + 1)
    from protocol import pack

    with pytest.raises(DecodeError):
        decode_message(pack([1, 46, *too_many]))
    assert PseudonymRefused(b"\x01" * 16, 250, "").reason_code is Reason.PROTOCOL_ERROR


def test_a_wrapped_epoch_key_opens_only_with_its_issuer_key() -> None:
    issuer, other = SigningKey.generate(), SigningKey.generate()
    rsa_key = PrivateKey.generate()
    data = wrap_epoch_private(issuer, rsa_key)
    assert rsa_key.public.modulus() not in data  # encrypted, not merely encoded
    assert unwrap_epoch_private(issuer, data).public.modulus() == rsa_key.public.modulus()
    with pytest.raises(ValueError, match="does not unwrap"):
        unwrap_epoch_private(other, data)
    with pytest.raises(ValueError):
        unwrap_epoch_private(issuer, data[:-40])
