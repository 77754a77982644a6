"""protocol/blind_rsa.py against RFC 9474's test vectors (Appendix A), and a round trip."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from protocol import VerifiedMemo, blind_rsa, install_verified_memo
from protocol.blind_rsa import PrivateKey, PublicKey, blind, blind_sign, emsa_pss_encode, finalize
from protocol.errors import SignatureError

DATA = json.loads((pathlib.Path(__file__).parent / "data" / "rfc9474_vectors.json").read_text())
KEY = PrivateKey.from_factors(int(DATA["p"], 16), int(DATA["q"], 16), DATA["e"])


def test_the_vector_key_is_the_rfc_key() -> None:
    assert KEY.public.n == int(DATA["n"], 16)


@pytest.fixture(params=["installed", "pow"])
def powmod(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sign with gmpy2 where the "fast" extra is installed, and with Python's pow."""
    if request.param == "pow":
        monkeypatch.setattr(blind_rsa, "_powmod", pow)
    else:
        pytest.importorskip("gmpy2")
        assert blind_rsa._powmod is not pow
    return str(request.param)


@pytest.mark.parametrize("vector", DATA["vectors"], ids=lambda v: v["name"])
def test_rfc_9474_vector(vector: dict[str, Any], powmod: str) -> None:
    pk = KEY.public
    msg, prefix, salt = (bytes.fromhex(vector[k]) for k in ("msg", "msg_prefix", "salt"))
    if "encoded_msg" in vector:
        assert emsa_pss_encode(prefix + msg, pk.n.bit_length() - 1, salt).hex() == vector["encoded_msg"]
    inv = int(vector["inv"], 16)
    blinded = blind(pk, msg, salt=salt, r=pow(inv, -1, pk.n), prefix=prefix)
    assert blinded.inv == inv
    assert blinded.blinded_msg.hex() == vector["blinded_msg"]
    # Base blinding inside blind_sign changes nothing in the result.
    blind_sig = blind_sign(KEY, blinded.blinded_msg, random=os.urandom(pk.modulus_len + 16))
    assert blind_sig.hex() == vector["blind_sig"]
    sig = finalize(pk, msg, blind_sig, inv, prefix=prefix)
    assert sig.hex() == vector["sig"]
    pk.verify(prefix + msg, sig)  # an ordinary RSASSA-PSS verify (cryptography)


def test_round_trip_with_a_fresh_2048_bit_key_and_tampering(powmod: str) -> None:
    sk = PrivateKey.generate(2048)
    pk = PublicKey.from_modulus(sk.public.modulus())
    b = blind(pk, b"pseudonym", salt=os.urandom(48), random=os.urandom(pk.modulus_len + 16))
    sig = finalize(pk, b"pseudonym", blind_sign(sk, b.blinded_msg, random=os.urandom(272)), b.inv)
    assert len(sig) == 256
    with pytest.raises(SignatureError):
        pk.verify(b"pseudonyM", sig)
    with pytest.raises(SignatureError):
        finalize(pk, b"other", blind_sign(sk, b.blinded_msg, random=os.urandom(272)), b.inv)
    with pytest.raises(ValueError):
        blind_sign(sk, b"\xff" * 256, random=os.urandom(272))  # not below n
    with pytest.raises(ValueError):
        blind_sign(sk, b"\x01" * 255, random=os.urandom(272))
    with pytest.raises(ValueError):
        blind(pk, b"pseudonym", salt=os.urandom(48), r=0)  # not invertible


def test_the_simulators_memo_keeps_tokens_that_verified_only() -> None:
    pk = KEY.public
    vector = DATA["vectors"][0]
    msg, prefix, sig = (bytes.fromhex(vector[k]) for k in ("msg", "msg_prefix", "sig"))
    memo = VerifiedMemo()
    previous = install_verified_memo(memo)
    try:
        pk.verify(prefix + msg, sig)
        PublicKey(pk.n).verify(prefix + msg, sig)  # another node's copy of the epoch key
        assert (memo.misses, memo.hits) == (1, 1)
        for _ in range(2):  # a failure is never remembered: checked, and refused, each time
            with pytest.raises(SignatureError):
                pk.verify(prefix + msg + b"!", sig)
        assert (memo.misses, memo.hits) == (3, 1)
    finally:
        install_verified_memo(previous)
