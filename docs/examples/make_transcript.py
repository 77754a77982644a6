"""Generate the worked example of docs/protocol.md ("Worked example").

Run from the repository root:

    .venv/bin/python docs/examples/make_transcript.py > /tmp/transcript.md

and paste the output into the document. Every input is fixed (Ed25519 seeds,
X25519 static *and* ephemeral private keys, validity times, ``now``), so the
output is byte-for-byte reproducible. tests/protocol/test_spec_transcript.py
re-derives the same bytes from the blocks in docs/protocol.md and fails if the
document and the code disagree.
"""

from __future__ import annotations

from protocol import (
    NEED_DATA,
    Close,
    Credential,
    Hello,
    Ping,
    Pong,
    Reason,
    Session,
    SigningKey,
    TrustPolicy,
    encode_message,
)

PARAMS: dict[str, str | int] = {
    "community": "example",
    "initiator_member_id": "alice",
    "initiator_role": "prosumer",
    "initiator_metering_point": "EAN871687400000000011",
    "responder_member_id": "bob",
    "responder_role": "prosumer",
    "responder_metering_point": "EAN871687400000000028",
    "valid_from": 1767225600,  # 2026-01-01T00:00:00Z
    "valid_until": 1798761600,  # 2027-01-01T00:00:00Z
    "now": 1780000000,
    "ping_seq": 1,
    "close_reason": 0,
    "close_message": "bye",
}

KEYS: dict[str, bytes] = {
    "issuer-ed25519-seed": bytes([0x11]) * 32,
    "initiator-ed25519-seed": bytes([0x21]) * 32,
    "initiator-x25519-static": bytes([0x41]) * 32,
    "initiator-x25519-ephemeral": bytes([0x42]) * 32,
    "responder-ed25519-seed": bytes([0x31]) * 32,
    "responder-x25519-static": bytes([0x51]) * 32,
    "responder-x25519-ephemeral": bytes([0x52]) * 32,
}


def x25519_public(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def run(params: dict[str, str | int], keys: dict[str, bytes]) -> dict[str, bytes]:
    """Drive two Sessions through the example; return every labelled byte string."""
    community = str(params["community"])
    now = float(params["now"])
    issuer = SigningKey.from_seed(keys["issuer-ed25519-seed"])
    out: dict[str, bytes] = {"issuer-public-key": issuer.public}
    sessions: dict[str, Session] = {}
    policy = TrustPolicy(community, frozenset({issuer.public}))
    for side in ("initiator", "responder"):
        signing = SigningKey.from_seed(keys[f"{side}-ed25519-seed"])
        static = keys[f"{side}-x25519-static"]
        out[f"{side}-ed25519-public"] = signing.public
        out[f"{side}-x25519-static-public"] = x25519_public(static)
        out[f"{side}-x25519-ephemeral-public"] = x25519_public(keys[f"{side}-x25519-ephemeral"])
        cred = Credential.issue(
            issuer, community=community, member_id=str(params[f"{side}_member_id"]),
            role=str(params[f"{side}_role"]),
            metering_point=str(params[f"{side}_metering_point"]),
            sign_pk=signing.public, noise_pk=x25519_public(static),
            valid_from=int(params["valid_from"]), valid_until=int(params["valid_until"]),
        )
        out[f"{side}-credential"] = cred.encode()
        out[f"{side}-credential-id"] = cred.credential_id
        sessions[side] = Session(
            initiator=side == "initiator", static_private=static, credential=cred,
            policy=policy, now=now, ephemeral_private=keys[f"{side}-x25519-ephemeral"],
        )
    ini, res = sessions["initiator"], sessions["responder"]

    def deliver(src: Session, dst: Session) -> tuple[bytes, list[object]]:
        data = src.data_to_send()
        dst.receive_data(data, now)
        events = []
        while (ev := dst.next_event()) is not NEED_DATA:
            events.append(ev)
        return data, events

    out["responder-hello"] = encode_message(Hello(res.credential))
    out["initiator-hello"] = encode_message(Hello(ini.credential))
    out["msg1"], _ = deliver(ini, res)
    out["msg2"], _ = deliver(res, ini)
    out["msg3"], _ = deliver(ini, res)
    assert ini.established and res.established
    out["handshake-hash"] = ini._hs.handshake_hash()
    assert out["handshake-hash"] == res._hs.handshake_hash()
    seq = int(params["ping_seq"])
    out["ping-plaintext"] = encode_message(Ping(seq))
    out["pong-plaintext"] = encode_message(Pong(seq))
    out["close-plaintext"] = encode_message(
        Close(int(params["close_reason"]), str(params["close_message"]))
    )
    ini.send(Ping(seq))
    out["ping-frame"], _ = deliver(ini, res)
    res.send(Pong(seq))  # the application answers a Ping it admits (section 13.1)
    out["pong-frame"], _ = deliver(res, ini)
    ini.close(Reason(int(params["close_reason"])), str(params["close_message"]))
    out["close-frame"], events = deliver(ini, res)
    assert len(events) == 1
    return out


# The blocks of the document's sections 11.2-11.4, in order, with a caption.
OUTPUT_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("11.2 Public keys and credentials", (
        ("issuer-public-key", "Issuer Ed25519 public key"),
        ("initiator-ed25519-public", "Initiator (alice) Ed25519 public key = `sign_pk`"),
        ("initiator-x25519-static-public", "Initiator X25519 static public key = `noise_pk`"),
        ("initiator-x25519-ephemeral-public", "Initiator X25519 ephemeral public key"),
        ("responder-ed25519-public", "Responder (bob) Ed25519 public key = `sign_pk`"),
        ("responder-x25519-static-public", "Responder X25519 static public key = `noise_pk`"),
        ("responder-x25519-ephemeral-public", "Responder X25519 ephemeral public key"),
        ("initiator-credential", "Initiator credential (canonical encoding, section 6)"),
        ("initiator-credential-id", "Initiator credential id (BLAKE2b-256 of the above)"),
        ("responder-credential", "Responder credential"),
        ("responder-credential-id", "Responder credential id"),
    )),
    ("11.3 Handshake", (
        ("responder-hello", "Payload of msg2: `pack(Hello(responder credential))`"),
        ("initiator-hello", "Payload of msg3: `pack(Hello(initiator credential))`"),
        ("msg1", "msg1 frame, initiator to responder (prefix `0020`, then `e`)"),
        ("msg2", "msg2 frame, responder to initiator"),
        ("msg3", "msg3 frame, initiator to responder"),
        ("handshake-hash", "Handshake hash `h` after msg3 (both sides)"),
    )),
    ("11.4 Transport", (
        ("ping-plaintext", "Plaintext of `Ping(seq=1)`"),
        ("ping-frame", "Ping frame, initiator to responder (initiator nonce 0)"),
        ("pong-plaintext", "Plaintext of `Pong(seq=1)`"),
        ("pong-frame", "Pong frame, responder to initiator (responder nonce 0)"),
        ("close-plaintext", "Plaintext of `Close(reason=0, message=\"bye\")`"),
        ("close-frame", "Close frame, initiator to responder (initiator nonce 1)"),
    )),
)


def hex_block(label: str, data: bytes, width: int = 32) -> str:
    """A fenced block, 32 bytes per line, as parsed by test_spec_transcript.py."""
    lines = [data[i : i + width].hex() for i in range(0, len(data), width)] or [""]
    return f'```hex title="{label}"\n' + "\n".join(lines) + "\n```\n"


def main() -> None:
    import warnings

    # noiseprotocol warns whenever an ephemeral key is preset; here that is the point.
    warnings.filterwarnings("ignore", "One of ephemeral keypairs", UserWarning)
    print('```text title="parameters"')
    for name, value in PARAMS.items():
        print(f"{name} = {value}")
    print("```\n")
    for label, data in KEYS.items():
        print(hex_block(label, data))
    out = run(PARAMS, KEYS)
    for heading, blocks in OUTPUT_SECTIONS:
        print(f"### {heading}\n")
        for label, caption in blocks:
            print(f"{caption} ({len(out[label])} bytes):\n")
            print(hex_block(label, out[label]))


if __name__ == "__main__":
    main()
