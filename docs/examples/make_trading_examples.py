"""Generate the trading examples of docs/protocol.md (section 12.6).

Run from the repository root:

    .venv/bin/python docs/examples/make_trading_examples.py

It reuses the keys of the worked example (section 11: issuer seed 11..,
alice = Ed25519 seed 21.. / X25519 static 41.., bob = 31.. / 51..) and prints
fenced ``msgpack title="..."`` blocks. tests/protocol/test_spec_trading.py
re-derives them and fails if the document and the code disagree.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import (
    RECEIPT_V1,
    Credential,
    EpochKey,
    EpochKeyAnnounce,
    HeldReceipt,
    HoldingsOffer,
    OwnerProof,
    PseudonymKeys,
    Reason,
    ReceiptsDelivery,
    ReceiptsRequest,
    SigningKey,
    TakeIntent,
    encode_message,
    epoch_of,
    finish_pseudonym,
    intent_context,
    intent_payload,
    request_pseudonym,
    seal,
    sign_owner_proof,
)
from protocol.trading import (
    GOSSIP_NONE,
    Cancel,
    CancelGossip,
    GossipBatch,
    GossipControl,
    Order,
    OrderGossip,
    OrdersRequest,
    Receipt,
    Take,
    TradeAccepted,
    TradeRefused,
    TradeTerms,
)

NOW = 1780000000
SLOT_LEN = 900
SLOT_START = 1780002000  # = 1977780 * 900, the slot starting 2000 s after NOW
VALID_FROM, VALID_UNTIL = 1767225600, 1798761600


def _x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def examples() -> dict[str, bytes]:
    issuer = SigningKey.from_seed(bytes([0x11]) * 32)
    alice = SigningKey.from_seed(bytes([0x21]) * 32)
    bob = SigningKey.from_seed(bytes([0x31]) * 32)
    alice_cred = Credential.issue(
        issuer, community="example", member_id="alice", role="prosumer",
        metering_point="EAN871687400000000011", sign_pk=alice.public,
        noise_pk=_x25519_public(bytes([0x41]) * 32), valid_from=VALID_FROM, valid_until=VALID_UNTIL)
    order = Order.create(alice, order_id=bytes([0x01]) * 16, member_id="alice", side="sell",
                         slot_start=SLOT_START, slot_len=SLOT_LEN, wh=1500, price=93000,
                         expiry=SLOT_START - 300)
    terms = TradeTerms(bytes([0x02]) * 16, order.order_id, order.wh, "alice", "bob", SLOT_START,
                       SLOT_LEN, 1000, 93000, NOW)
    bob_sig = terms.sign(bob)
    receipt = Receipt(terms, terms.sign(alice), bob_sig)
    cancel = Cancel.create(alice, order_id=order.order_id, member_id="alice", issued_at=NOW + 60)
    return {
        "trading-order": order.encode(),
        "trading-order-gossip": encode_message(OrderGossip(order, alice_cred, 8)),
        "trading-orders-request": encode_message(OrdersRequest()),
        "trading-take": encode_message(Take(terms, bob_sig)),
        "trading-trade-accepted": encode_message(TradeAccepted(receipt)),
        "trading-trade-refused": encode_message(
            TradeRefused(bytes([0x03]) * 16, int(Reason.INSUFFICIENT), 500, "only 500 Wh remain")),
        "trading-cancel-gossip": encode_message(CancelGossip(cancel, 8)),
        "trading-gossip-control": encode_message(GossipControl(GOSSIP_NONE)),
        # A forwarder's batch: alice's order and its cancel, one hop on (hops 7).
        "trading-gossip-batch": encode_message(
            GossipBatch((OrderGossip(order, alice_cred, 7),), (CancelGossip(cancel, 7),))),
        # Reconciliation (section 12.7): alice offers what she holds with bob
        # since a week before NOW; bob asks for it; alice delivers the receipt.
        "trading-holdings-offer": encode_message(
            HoldingsOffer(NOW - 7 * 86400, (terms.trade_id,), True)),
        "trading-receipts-request": encode_message(ReceiptsRequest((terms.trade_id,))),
        "trading-receipts-delivery": encode_message(
            ReceiptsDelivery((HeldReceipt(RECEIPT_V1, receipt.encode()),))),
        **anon_examples(issuer, alice, bob, alice_cred),
    }


def bob_credentials() -> list[Credential]:
    """bob's credential (keys of section 11, issued like alice's)."""
    issuer = SigningKey.from_seed(bytes([0x11]) * 32)
    bob = SigningKey.from_seed(bytes([0x31]) * 32)
    return [Credential.issue(
        issuer, community="example", member_id="bob", role="prosumer",
        metering_point="EAN871687400000000028", sign_pk=bob.public,
        noise_pk=_x25519_public(bytes([0x51]) * 32), valid_from=VALID_FROM, valid_until=VALID_UNTIL)]


def _prime(seed: bytes) -> int:
    """A deterministic 1024-bit prime p with gcd(65537, p - 1) = 1 (examples only)."""
    n = int.from_bytes(hashlib.shake_256(seed).digest(128), "big") | (3 << 1022) | 1
    for _ in range(100_000):
        if n % 65537 != 1 and _probably_prime(n):
            return n
        n += 2
    raise AssertionError("no prime found")  # pragma: no cover


def _probably_prime(n: int) -> bool:
    if any(n % p == 0 for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53):  # fixed bases
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def anon_examples(issuer: SigningKey, alice: SigningKey, bob: SigningKey,
                  alice_cred: Credential) -> dict[str, bytes]:
    """Section 12.8: the same order, posted by alice under a pseudonym, and bob's way to her."""
    from protocol.blind_rsa import PrivateKey, blind_sign

    epoch = epoch_of(NOW)
    rsa_key = PrivateKey.from_factors(_prime(b"p2pd example epoch key p"), _prime(b"p2pd example epoch key q"))
    epoch_key = EpochKey.create(issuer, community="example", epoch=epoch, modulus=rsa_key.public.modulus(),
                                quota=256)
    keys = PseudonymKeys.derive(bytes([0x61]) * 32, epoch, 0)
    # The token depends on the PSS salt only: the blinding factor r cancels out.
    req = request_pseudonym(epoch_key, keys, salt=bytes([0x62]) * 48, random=bytes([0x63]) * 272)
    pseudonym = finish_pseudonym(epoch_key, req, blind_sign(rsa_key, req.blinded_msg,
                                                            random=bytes([0x64]) * 272))
    order = Order.create(keys.signing, order_id=pseudonym.order_id, member_id=pseudonym.member_id,
                         side="sell", slot_start=SLOT_START, slot_len=SLOT_LEN, wh=1500, price=93000,
                         expiry=SLOT_START - 300)
    intent_id = bytes([0x04]) * 16
    sealed = seal(pseudonym.box_pk, intent_context("example", order.order_id, intent_id),
                  intent_payload("bob"), ephemeral=bytes([0x65]) * 32)
    [bob_cred] = bob_credentials()
    bob_cred_id = bob_cred.credential_id
    proof = sign_owner_proof(keys.signing, community="example", order_id=order.order_id,
                             owner_credential_id=alice_cred.credential_id, taker_credential_id=bob_cred_id)
    terms = TradeTerms(bytes([0x05]) * 16, order.order_id, order.wh, "alice", "bob", SLOT_START,
                       SLOT_LEN, 1000, 93000, NOW)
    return {
        "trading-anon-epoch-key-announce": encode_message(EpochKeyAnnounce(epoch_key)),
        "trading-anon-order-gossip": encode_message(OrderGossip(order, pseudonym, 8)),
        "trading-anon-take-intent": encode_message(TakeIntent(order.order_id, intent_id, sealed, 8)),
        "trading-anon-owner-proof": encode_message(OwnerProof(order.order_id, proof)),
        "trading-anon-take": encode_message(Take(terms, terms.sign(bob))),
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
