"""Generate the S2-S4 examples of docs/protocol.md (section 15.8).

Run from the repository root:

    .venv/bin/python docs/examples/make_s2s4_examples.py

Keys of the worked example (section 11): issuer seed 11.., alice 21.. (here a
client), bob 31.. (here a representative), plus a broker with seed 61..
tests/protocol/test_spec_s2s4.py re-derives the blocks and fails on drift.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import Reason, SealedEntry, SigningKey, digest, encode_message, seal_receipt
from protocol.brokerage import (
    BookChunk,
    BrokerSubmit,
    ClearingAnnounce,
    ClearingSummary,
    MatchPropose,
    MatchSign,
)
from protocol.credentials import Credential
from protocol.delegation import (
    AgentOrder,
    AgentReceipt,
    AgentRefused,
    AgentTerms,
    Delegation,
    DelegationGossip,
    DelegationRevoke,
    DelegationRevokeGossip,
    MeterReport,
    MeterReportMsg,
)
from protocol.receipt_log import (
    EquivocationProof,
    HeadGossip,
    LogEntries,
    LogEntry,
    LogHead,
    LogRequest,
    ReceiptChain,
    ReceiptReplica,
)
from protocol.sharing import (
    FillClaim,
    Share,
    SharedClearing,
    ShareJoin,
    ShareResult,
    ShareRound,
    ShareSum,
    pack_vector,
)

NOW = 1780000000
SLOT_LEN = 900
SLOT_START = 1780002000
VALID_FROM, VALID_UNTIL = 1767225600, 1798761600
GRID = (60000, 80000, 100000)
M64 = 2**64


def noise_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def example_random() -> Callable[[int], bytes]:
    """A fixed stream of "random" bytes: BLAKE2b-512 of b"p2pd example" and a counter."""
    counter = iter(range(1 << 30))

    def take(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(b"p2pd example" + next(counter).to_bytes(4, "big")).digest()
        return out[:n]

    return take


def shared_examples(broker: SigningKey) -> dict[str, bytes]:
    """bob (selling 1200 Wh at 60000 or more) and carol (buying 1000 Wh at 100000 or
    less) clear a slot on shared curves; their random vectors are fixed bytes."""
    bob_curve = [1200, 1200, 1200, 0, 0, 0]  # supply | demand over GRID
    carol_curve = [0, 0, 0, 1000, 1000, 1000]
    to_carol = [int.from_bytes(bytes([0x0B + i]) * 8, "big") for i in range(6)]
    to_bob = [int.from_bytes(bytes([0x2B + i]) * 8, "big") for i in range(6)]
    bob_own = [(c - r) % M64 for c, r in zip(bob_curve, to_carol, strict=True)]
    carol_own = [(c - r) % M64 for c, r in zip(carol_curve, to_bob, strict=True)]
    bob_sum = [(a + b) % M64 for a, b in zip(bob_own, to_bob, strict=True)]
    result = SharedClearing.create(
        broker, broker="broker", slot_start=SLOT_START, slot_len=SLOT_LEN, round=1, participants=("bob", "carol"),
        grid=GRID, supply=pack_vector([1200, 1200, 1200]), demand=pack_vector([1000, 1000, 1000]),
        price=80000, volume_wh=1000)
    assert [(a + b) % M64 for a, b in zip(bob_sum, [(x + y) % M64 for x, y in zip(carol_own, to_carol, strict=True)],
                                          strict=True)] == [1200, 1200, 1200, 1000, 1000, 1000]
    return {
        "s2s4-share-join": encode_message(ShareJoin(SLOT_START, SLOT_LEN)),
        "s2s4-share-round": encode_message(ShareRound(SLOT_START, 1, GRID, ("bob", "carol"))),
        "s2s4-share": encode_message(Share(SLOT_START, 1, pack_vector(to_carol))),
        "s2s4-share-sum": encode_message(ShareSum(SLOT_START, 1, ("bob", "carol"), pack_vector(bob_sum))),
        "s2s4-share-result": encode_message(ShareResult(result)),
        "s2s4-fill-claim": encode_message(FillClaim(SLOT_START, 1, bytes([0x0D]) * 16, 1200, bytes([0x0E]) * 16, 0)),
    }


def examples() -> dict[str, bytes]:
    issuer = SigningKey.from_seed(bytes([0x11]) * 32)
    alice = SigningKey.from_seed(bytes([0x21]) * 32)
    bob = SigningKey.from_seed(bytes([0x31]) * 32)
    broker = SigningKey.from_seed(bytes([0x61]) * 32)

    def cred(member: str, role: str, key: SigningKey, noise: int) -> Credential:
        return Credential.issue(issuer, community="example", member_id=member, role=role,
                                metering_point="EAN87168740000000" + str(noise), sign_pk=key.public,
                                noise_pk=bytes([noise]) * 32, valid_from=VALID_FROM, valid_until=VALID_UNTIL)

    alice_cred = cred("alice", "prosumer", alice, 0x41)
    bob_cred = cred("bob", "representative", bob, 0x51)
    d = Delegation.create(alice, delegation_id=bytes([0x04]) * 16, principal="alice", agent="bob",
                          max_wh_per_slot=2000, min_sell_price=60000, max_buy_price=120000,
                          valid_from=NOW, valid_until=NOW + 86400)
    rev = DelegationRevoke.create(alice, delegation_id=d.delegation_id, principal="alice", issued_at=NOW + 3600)
    report = MeterReport.create(alice, principal="alice", agent="bob", slot_start=SLOT_START,
                                slot_len=SLOT_LEN, net_wh=1200, issued_at=NOW)
    order = AgentOrder.create(bob, order_id=bytes([0x05]) * 16, principal="bob", agent="bob", side="sell",
                              slot_start=SLOT_START, slot_len=SLOT_LEN, wh=1200, price=60000,
                              expiry=SLOT_START - 300)
    terms = AgentTerms(bytes([0x06]) * 16, "bob", "bob", "carol", "carol", "broker", order.order_id,
                       bytes([0x07]) * 16, SLOT_START, SLOT_LEN, 1000, 76500, NOW + 1700)
    book_hash = bytes([0x08]) * 32
    summary = ClearingSummary.create(broker, broker="broker", slot_start=SLOT_START, slot_len=SLOT_LEN,
                                     orders=2, book_hash=book_hash, result_hash=bytes([0x09]) * 32,
                                     price=76500, volume_wh=1000)
    chain = ReceiptChain()
    receipt = AgentReceipt(terms, None, None, terms.sign(bob), bytes(64), terms.sign(broker))
    chain.append(receipt.encode())
    head = chain.head(bob, "bob")
    other = LogHead.create(bob, "bob", 1, bytes([0x0A]) * 32)
    # The receipt sealed to its signers, bob, carol and the broker, whose X25519
    # (Noise static) private keys here are 32.., 42.. and 62..; the ephemeral key
    # and the content key are the stream of example_random().
    recipients = [noise_public(bytes([b]) * 32) for b in (0x32, 0x42, 0x62)]
    entry = SealedEntry(digest(receipt.encode()),
                        seal_receipt(receipt.encode(), digest(receipt.encode()), recipients, example_random()))
    return {
        "s2s4-delegation": d.encode(),
        "s2s4-delegation-gossip": encode_message(DelegationGossip(d, alice_cred, 4)),
        "s2s4-delegation-revoke-gossip": encode_message(DelegationRevokeGossip(rev, 4)),
        "s2s4-meter-report": encode_message(MeterReportMsg(report)),
        "s2s4-agent-order": order.encode(),
        "s2s4-broker-submit": encode_message(BrokerSubmit(order, None)),
        "s2s4-match-propose": encode_message(MatchPropose(terms, book_hash, terms.sign(broker), bob_cred)),
        "s2s4-match-sign": encode_message(MatchSign(terms.trade_id, terms.sign(bob))),
        "s2s4-refused": encode_message(AgentRefused(terms.trade_id, int(Reason.OUT_OF_BOUNDS), "price beyond limit")),
        "s2s4-book-chunk": encode_message(BookChunk(SLOT_START, (order,))),
        "s2s4-clearing-announce": encode_message(ClearingAnnounce(summary)),
        "s2s4-head-gossip": encode_message(HeadGossip(head, bob_cred, 3)),
        "s2s4-equivocation-proof": EquivocationProof(head, other).encode(),
        # bob's entry as a replica holder gets it: the digest, the receipt sealed to its signers.
        "s2s4-receipt-replica": encode_message(ReceiptReplica(entry, head)),
        # carol follows bob's log and asks for what follows seq 0: bob's one entry, sealed.
        "s2s4-log-request": encode_message(LogRequest("bob", 0, 8)),
        "s2s4-log-entries": encode_message(LogEntries("bob", 0, (LogEntry(1, entry),), head, bob_cred)),
    } | shared_examples(broker)


def main() -> None:
    for label, data in examples().items():
        text = data.hex()
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        print(f'```msgpack title="{label}"')
        print("\n".join(lines))
        print("```\n")


if __name__ == "__main__":
    main()
