"""Ed25519 over canonical bytes, and the simulator's memo of verified signatures."""

from __future__ import annotations

import pytest

from protocol import SignatureError, SigningKey, VerifiedMemo, install_verified_memo, verify

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


def test_verify_and_refuse() -> None:
    sig = KEY.sign("p2pd/test/1", [1, "a"])
    verify(KEY.public, sig, "p2pd/test/1", [1, "a"])
    for public, fields, domain in ((OTHER.public, [1, "a"], "p2pd/test/1"), (KEY.public, [2, "a"], "p2pd/test/1"),
                                   (KEY.public, [1, "a"], "p2pd/other/1")):
        with pytest.raises(SignatureError):
            verify(public, sig, domain, fields)


def test_memo_shares_successes_only() -> None:
    memo = VerifiedMemo(max_entries=2)
    previous = install_verified_memo(memo)
    try:
        sig = KEY.sign("p2pd/test/1", [1])
        verify(KEY.public, sig, "p2pd/test/1", [1])
        verify(KEY.public, sig, "p2pd/test/1", [1])
        assert (memo.misses, memo.hits) == (1, 1)
        # A forged signature, another key or other bytes: verified, and refused, every time.
        for _ in range(2):
            with pytest.raises(SignatureError):
                verify(KEY.public, bytes(64), "p2pd/test/1", [1])
            with pytest.raises(SignatureError):
                verify(OTHER.public, sig, "p2pd/test/1", [1])
            with pytest.raises(SignatureError):
                verify(KEY.public, sig, "p2pd/test/1", [2])
        assert memo.hits == 1 and memo.misses == 7
        # Bounded: the oldest success is forgotten (and verified again when met).
        for i in (2, 3):
            verify(KEY.public, KEY.sign("p2pd/test/1", [i]), "p2pd/test/1", [i])
        verify(KEY.public, sig, "p2pd/test/1", [1])
        assert memo.misses == 10
    finally:
        install_verified_memo(previous)
    assert install_verified_memo(None) is None
