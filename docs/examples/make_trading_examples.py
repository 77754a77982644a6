"""Generate the trading examples of docs/protocol.md (section 12.6).

Run from the repository root:

    .venv/bin/python docs/examples/make_trading_examples.py

It reuses the keys of the worked example (section 11: issuer seed 11..,
alice = Ed25519 seed 21.. / X25519 static 41.., bob = 31.. / 51..) and prints
fenced ``msgpack title="..."`` blocks. tests/protocol/test_spec_trading.py
re-derives them and fails if the document and the code disagree.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import (
    RECEIPT_V1,
    Credential,
    GossipHave,
    GossipWant,
    HeldReceipt,
    HoldingsOffer,
    Reason,
    ReceiptsDelivery,
    ReceiptsRequest,
    SigningKey,
    SlotIds,
    encode_message,
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
        # Lazy gossip (section 12.3): alice announces her order by id, bob asks for it.
        "trading-gossip-have": encode_message(GossipHave((SlotIds(SLOT_START, order.order_id),), b"")),
        "trading-gossip-want": encode_message(GossipWant(order.order_id, b"")),
        # Reconciliation (section 12.7): alice offers what she holds with bob
        # since a week before NOW; bob asks for it; alice delivers the receipt.
        "trading-holdings-offer": encode_message(
            HoldingsOffer(NOW - 7 * 86400, (terms.trade_id,), True)),
        "trading-receipts-request": encode_message(ReceiptsRequest((terms.trade_id,))),
        "trading-receipts-delivery": encode_message(
            ReceiptsDelivery((HeldReceipt(RECEIPT_V1, receipt.encode()),))),
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
