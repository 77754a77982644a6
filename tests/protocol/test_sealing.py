"""protocol/sealing.py: a receipt sealed to its parties opens for them and only for them."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import SealError, digest, open_receipt, seal_receipt
from protocol.sealing import SEALED_MAX, SEALED_MIN, SLOTS


def keypair() -> tuple[bytes, bytes]:
    private = os.urandom(32)
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, public


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=4096), st.integers(1, SLOTS))
def test_each_recipient_opens_and_nobody_else(receipt: bytes, n: int) -> None:
    keys = [keypair() for _ in range(n)]
    box = seal_receipt(receipt, digest(receipt), [pub for _, pub in keys], os.urandom)
    assert SEALED_MIN <= len(box) <= SEALED_MAX and (len(box) - 32 - SLOTS * 48 - 16) % 256 == 0
    for private, _ in keys:
        assert open_receipt(box, digest(receipt), private) == receipt
    with pytest.raises(SealError):
        open_receipt(box, digest(receipt), keypair()[0])


def test_a_box_tells_nothing_of_its_recipients_or_its_exact_size() -> None:
    a_pub, b_pub = keypair()[1], keypair()[1]
    receipt = b"x" * 300
    one, two = seal_receipt(receipt, digest(receipt), [a_pub], os.urandom), seal_receipt(receipt, digest(receipt), [a_pub, b_pub],
                                                                          os.urandom)
    assert len(one) == len(two) == len(seal_receipt(b"y" * 500, digest(b"y" * 500), [b_pub], os.urandom))
    for box in (one, two):
        assert a_pub not in box and b_pub not in box and receipt not in box
    assert one != seal_receipt(receipt, digest(receipt), [a_pub], os.urandom)  # fresh keys every time


def test_an_altered_box_or_another_entrys_digest_does_not_open() -> None:
    private, public = keypair()
    receipt = b"a receipt"
    box = seal_receipt(receipt, digest(receipt), [public], os.urandom)
    flipped = box[:-1] + bytes([box[-1] ^ 1])
    for bad_box, bad_digest in ((flipped, digest(receipt)), (box, digest(b"another")), (box[:100], digest(receipt))):
        with pytest.raises(SealError):
            open_receipt(bad_box, bad_digest, private)
    with pytest.raises(ValueError):
        seal_receipt(receipt, digest(receipt), [public] * (SLOTS + 1), os.urandom)
    with pytest.raises(ValueError):
        seal_receipt(b"z" * 4097, digest(b"z"), [public], os.urandom)
