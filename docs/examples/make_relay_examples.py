"""Generate the relayed-take examples of docs/protocol.md (section 12.9).

Run from the repository root:

    .venv/bin/python docs/examples/make_relay_examples.py

The trade of section 12.6 (alice's order, bob takes 1000 Wh with trade id
16 x 02) made through a relay: bob's ``RelayedTake`` to the relay, the relay's
forward to alice, alice's answer with the receipt, and a refusal (trade id 16
x 03, INSUFFICIENT, 500 Wh left) signed by alice. Keys and credentials are
those of section 11. tests/protocol/test_spec_relay.py re-derives the blocks
and fails if the document and the code disagree.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import (
    Credential,
    Reason,
    Receipt,
    RelayedAnswer,
    RelayedTake,
    SigningKey,
    TradeRefusal,
    TradeTerms,
    encode_message,
)

NOW = 1780000000
SLOT_LEN = 900
SLOT_START = 1780002000
VALID_FROM, VALID_UNTIL = 1767225600, 1798761600


def _x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def examples() -> dict[str, bytes]:
    issuer = SigningKey.from_seed(bytes([0x11]) * 32)
    alice = SigningKey.from_seed(bytes([0x21]) * 32)
    bob = SigningKey.from_seed(bytes([0x31]) * 32)
    bob_cred = Credential.issue(
        issuer, community="example", member_id="bob", role="prosumer",
        metering_point="EAN871687400000000028", sign_pk=bob.public,
        noise_pk=_x25519_public(bytes([0x51]) * 32), valid_from=VALID_FROM, valid_until=VALID_UNTIL)
    terms = TradeTerms(bytes([0x02]) * 16, bytes([0x01]) * 16, 1500, "alice", "bob", SLOT_START,
                       SLOT_LEN, 1000, 93000, NOW)
    bob_sig = terms.sign(bob)
    receipt = Receipt(terms, terms.sign(alice), bob_sig)
    refusal = TradeRefusal.create(alice, trade_id=bytes([0x03]) * 16, owner="alice",
                                  reason=int(Reason.INSUFFICIENT), remaining_wh=500,
                                  message="only 500 Wh remain")
    return {
        "relay-take": encode_message(RelayedTake("alice", 1, bob_cred, terms, bob_sig)),
        "relay-take-forwarded": encode_message(RelayedTake("alice", 0, bob_cred, terms, bob_sig)),
        "relay-answer-accepted": encode_message(RelayedAnswer(terms.trade_id, receipt, None)),
        "relay-answer-refused": encode_message(RelayedAnswer(refusal.trade_id, None, refusal)),
    }


def main() -> None:
    for label, data in examples().items():
        text = data.hex()
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        print(f'```msgpack title="{label}"')
        print("\n".join(lines))
        print("```\n")


if __name__ == "__main__":
    main()
