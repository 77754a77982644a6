"""docs/protocol.md's worked example must match what our Session produces.

The inputs (parameters and private keys) and the expected bytes are both parsed
from the document's labelled fenced blocks, then two Sessions are driven with
those inputs. A change to the code that alters any byte on the wire, or an edit
to the document, makes this test fail; regenerate the blocks with
``docs/examples/make_transcript.py`` only if the wire change is intended.
"""

from __future__ import annotations

import pathlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    Credential,
    Event,
    HandshakeComplete,
    Hello,
    Ping,
    Pong,
    Reason,
    Session,
    SigningKey,
    TrustPolicy,
    decode_message,
    digest,
    encode_message,
    prologue,
)

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCK = re.compile(r'^```(hex|text) title="([^"]+)"\n(.*?)^```$', re.M | re.S)

# Every ephemeral key below is fixed on purpose; noiseprotocol warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")


def doc_blocks() -> tuple[dict[str, str], dict[str, bytes]]:
    params: dict[str, str] = {}
    hexes: dict[str, bytes] = {}
    for kind, label, body in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        if kind == "text" and label == "parameters":
            for line in body.splitlines():
                name, _, value = line.partition(" = ")
                params[name.strip()] = value
        elif kind == "hex":
            assert label not in hexes, f"duplicate block {label}"
            hexes[label] = bytes.fromhex("".join(body.split()))
    return params, hexes


def x25519_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def drain(sess: Session) -> list[Event]:
    events: list[Event] = []
    while (ev := sess.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event)
        events.append(ev)
    return events


def derive(params: dict[str, str], keys: dict[str, bytes]) -> dict[str, bytes]:
    """Run the example scenario of section 11 and collect every labelled byte string."""
    community = params["community"]
    now = float(params["now"])
    issuer = SigningKey.from_seed(keys["issuer-ed25519-seed"])
    policy = TrustPolicy(community, frozenset({issuer.public}))
    out: dict[str, bytes] = {"issuer-public-key": issuer.public}
    sess: dict[str, Session] = {}
    for side in ("initiator", "responder"):
        signing = SigningKey.from_seed(keys[f"{side}-ed25519-seed"])
        static = keys[f"{side}-x25519-static"]
        ephemeral = keys[f"{side}-x25519-ephemeral"]
        out[f"{side}-ed25519-public"] = signing.public
        out[f"{side}-x25519-static-public"] = x25519_public(static)
        out[f"{side}-x25519-ephemeral-public"] = x25519_public(ephemeral)
        cred = Credential.issue(
            issuer, community=community, member_id=params[f"{side}_member_id"],
            role=params[f"{side}_role"], metering_point=params[f"{side}_metering_point"],
            sign_pk=signing.public, noise_pk=x25519_public(static),
            valid_from=int(params["valid_from"]), valid_until=int(params["valid_until"]),
        )
        out[f"{side}-credential"] = cred.encode()
        out[f"{side}-credential-id"] = cred.credential_id
        out[f"{side}-hello"] = encode_message(Hello(cred))
        sess[side] = Session(
            initiator=side == "initiator", static_private=static, credential=cred,
            policy=policy, now=now, ephemeral_private=ephemeral,
        )
    ini, res = sess["initiator"], sess["responder"]

    def deliver(src: Session, dst: Session) -> tuple[bytes, list[Event]]:
        data = src.data_to_send()
        dst.receive_data(data, now)
        return data, drain(dst)

    out["msg1"], ev = deliver(ini, res)
    assert ev == []
    out["msg2"], ev = deliver(res, ini)
    assert [type(e) for e in ev] == [HandshakeComplete]
    out["msg3"], ev2 = deliver(ini, res)
    assert [type(e) for e in ev2] == [HandshakeComplete]
    assert isinstance(ev[0], HandshakeComplete) and isinstance(ev2[0], HandshakeComplete)
    assert ev[0].handshake_hash == ev2[0].handshake_hash
    out["handshake-hash"] = ev[0].handshake_hash

    seq = int(params["ping_seq"])
    out["ping-plaintext"] = encode_message(Ping(seq))
    out["pong-plaintext"] = encode_message(Pong(seq))
    close = Close(int(params["close_reason"]), params["close_message"])
    out["close-plaintext"] = encode_message(close)
    ini.send(Ping(seq))
    out["ping-frame"], ev = deliver(ini, res)
    assert ev == [Ping(seq)]  # surfaced; the application answers it (section 13.1)
    res.send(Pong(seq))
    out["pong-frame"], ev = deliver(res, ini)
    assert ev == [Pong(seq)]
    ini.close(Reason(close.reason), close.message)
    out["close-frame"], ev = deliver(ini, res)
    assert ev == [ConnectionClosed(Reason(close.reason), close.message, True)]
    return out


def test_document_has_all_blocks() -> None:
    params, hexes = doc_blocks()
    assert params["community"] == "example"
    expected = {
        "issuer-ed25519-seed", "initiator-ed25519-seed", "initiator-x25519-static",
        "initiator-x25519-ephemeral", "responder-ed25519-seed", "responder-x25519-static",
        "responder-x25519-ephemeral", "msg1", "msg2", "msg3", "ping-frame", "pong-frame",
        "close-frame", "initiator-credential", "responder-credential",
    }
    assert expected <= hexes.keys()


def test_transcript_matches_session_bytes() -> None:
    params, hexes = doc_blocks()
    keys = {label: data for label, data in hexes.items() if len(data) == 32 and (
        label.endswith("-seed") or label.endswith("-static") or label.endswith("-ephemeral"))}
    assert len(keys) == 7
    derived = derive(params, keys)
    outputs = {label: data for label, data in hexes.items() if label not in keys}
    assert outputs.keys() == derived.keys()
    for label, data in outputs.items():
        assert derived[label].hex() == data.hex(), f"block {label!r} drifted from the code"


def test_transcript_is_self_consistent() -> None:
    """Checks a reader can do with the document alone (lengths, ids, plaintexts)."""
    _, h = doc_blocks()
    assert h["msg1"][:2] == b"\x00\x20" and h["msg1"][2:] == h["initiator-x25519-ephemeral-public"]
    assert int.from_bytes(h["msg2"][:2], "big") == 32 + 48 + len(h["responder-hello"]) + 16
    assert h["msg2"][2:34] == h["responder-x25519-ephemeral-public"]
    assert int.from_bytes(h["msg3"][:2], "big") == 48 + len(h["initiator-hello"]) + 16
    for side in ("initiator", "responder"):
        assert h[f"{side}-hello"] == b"\x93\x01\x01" + h[f"{side}-credential"]
        assert digest(h[f"{side}-credential"]) == h[f"{side}-credential-id"]
        cred = Credential.decode(h[f"{side}-credential"])
        cred.verify_signature()
        assert cred.noise_pk == h[f"{side}-x25519-static-public"]
        assert cred.issuer_pk == h["issuer-public-key"]
    for name in ("ping", "pong", "close"):
        frame_ = h[f"{name}-frame"]
        assert int.from_bytes(frame_[:2], "big") == len(frame_) - 2 == len(h[f"{name}-plaintext"]) + 16
    assert decode_message(h["ping-plaintext"]) == Ping(1)
    assert decode_message(h["close-plaintext"]) == Close(0, "bye")
    assert prologue("example").hex() == "70327064" "2f310a" "6578616d706c65"
