"""Generate the S2-S4 examples of docs/protocol.md (section 15.8).

Run from the repository root:

    .venv/bin/python docs/examples/make_s2s4_examples.py

Keys of the worked example (section 11): issuer seed 11.., alice 21.. (here a
client), bob 31.. (here a representative), plus a broker with seed 61..
tests/protocol/test_spec_s2s4.py re-derives the blocks and fails on drift.
"""

from __future__ import annotations

from protocol import Reason, SigningKey, encode_message
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
)

NOW = 1780000000
SLOT_LEN = 900
SLOT_START = 1780002000
VALID_FROM, VALID_UNTIL = 1767225600, 1798761600


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
        # carol follows bob's log and asks for what follows seq 0: bob's one entry.
        "s2s4-log-request": encode_message(LogRequest("bob", 0, 8)),
        "s2s4-log-entries": encode_message(LogEntries("bob", 0, (LogEntry(1, 2, receipt.encode()),), head, bob_cred)),
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
