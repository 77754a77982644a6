"""Guards for noiseprotocol 0.3.1 with the installed cryptography (pinned in pyproject)."""

from __future__ import annotations

import warnings

from noise.connection import Keypair, NoiseConnection
from p2pd_test_helpers import x25519_keypair

from protocol import NOISE_PROTOCOL_NAME, NoiseHandshake


def test_plain_noiseprotocol_xx_runs_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the suite also runs with filterwarnings=error
        ini = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        res = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        ini.set_as_initiator()
        res.set_as_responder()
        for conn in (ini, res):
            conn.set_keypair_from_private_bytes(Keypair.STATIC, x25519_keypair()[0])
            conn.set_prologue(b"p")
            conn.start_handshake()
        res.read_message(ini.write_message())
        ini.read_message(res.write_message())
        res.read_message(ini.write_message())
        assert ini.handshake_finished and res.handshake_finished
        assert res.decrypt(ini.encrypt(b"hi")) == b"hi"
        ini.rekey_outbound_cipher()
        res.rekey_inbound_cipher()
        assert res.decrypt(ini.encrypt(b"again")) == b"again"


def test_remote_static_known_on_both_sides() -> None:
    """noiseprotocol drops its handshake state at the end; our wrapper keeps rs."""
    (ipriv, ipub), (rpriv, rpub) = x25519_keypair(), x25519_keypair()
    ini = NoiseHandshake(initiator=True, static_private=ipriv, community="c")
    res = NoiseHandshake(initiator=False, static_private=rpriv, community="c")
    res.read_message(ini.write_message())
    ini.read_message(res.write_message(b"two"))
    assert ini.remote_static == rpub
    res.read_message(ini.write_message(b"three"))
    assert res.finished and ini.finished
    assert res.remote_static == ipub
    assert ini.handshake_hash() == res.handshake_hash()
