"""docs/protocol.md section 15: the S2-S4 examples match the code and verify."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from protocol import AgentReceipt, SealError, SigningKey, decode_message, digest, open_receipt
from protocol.brokerage import MatchPropose
from protocol.delegation import Delegation, DelegationGossip
from protocol.receipt_log import (
    GENESIS,
    EquivocationProof,
    LogEntries,
    LogRequest,
    ReceiptReplica,
    entry_hash,
    entry_hash_of,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
BLOCK = re.compile(r'^```msgpack title="(s2s4-[^"]+)"\n(.*?)^```$', re.M | re.S)


def documented() -> dict[str, bytes]:
    return {label: bytes.fromhex("".join(body.split()))
            for label, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))}


def generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "make_s2s4_examples", ROOT / "docs" / "examples" / "make_s2s4_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_s2s4_examples_match_the_code() -> None:
    doc = documented()
    derived = generator().examples()  # type: ignore[attr-defined]
    assert doc.keys() == derived.keys()
    for label, data in derived.items():
        assert doc[label].hex() == data.hex(), f"block {label!r} drifted from the code"


def test_examples_decode_and_verify() -> None:
    doc = documented()
    alice = SigningKey.from_seed(bytes([0x21]) * 32).public
    bob = SigningKey.from_seed(bytes([0x31]) * 32).public
    broker = SigningKey.from_seed(bytes([0x61]) * 32).public
    d = Delegation.decode(doc["s2s4-delegation"])
    d.verify(alice)
    gossip = decode_message(doc["s2s4-delegation-gossip"])
    assert isinstance(gossip, DelegationGossip) and gossip.delegation == d
    propose = decode_message(doc["s2s4-match-propose"])
    assert isinstance(propose, MatchPropose)
    propose.terms.verify(broker, propose.broker_sig)
    assert propose.counterparty.role == "representative"
    proof = EquivocationProof.decode(doc["s2s4-equivocation-proof"])
    proof.head_a.verify(bob)
    proof.head_b.verify(bob)
    assert decode_message(doc["s2s4-log-request"]) == LogRequest("bob", 0, 8)
    page = decode_message(doc["s2s4-log-entries"])
    assert isinstance(page, LogEntries) and page.head is not None and page.credential is not None
    page.head.verify(page.credential.sign_pk)
    assert page.credential.sign_pk == bob
    h = GENESIS
    for e in page.entries:  # the entries' digests reproduce bob's signed head
        h = entry_hash_of(h, e.seq, e.entry.digest)
    assert h == page.head.head_hash and page.head == proof.head_a
    # Each signer opens the sealed receipt with its X25519 key; anyone else cannot.
    replica = decode_message(doc["s2s4-receipt-replica"])
    assert isinstance(replica, ReceiptReplica) and replica.entry == page.entries[0].entry
    for private in (0x32, 0x42, 0x62):
        receipt = open_receipt(replica.entry.sealed, replica.entry.digest, bytes([private]) * 32)
        assert digest(receipt) == replica.entry.digest and entry_hash(GENESIS, 1, receipt) == page.head.head_hash
        assert AgentReceipt.decode(receipt).terms == propose.terms
    with pytest.raises(SealError):
        open_receipt(replica.entry.sealed, replica.entry.digest, bytes([0x52]) * 32)
    for label, data in doc.items():
        if label not in ("s2s4-delegation", "s2s4-agent-order", "s2s4-equivocation-proof"):
            assert 64 <= decode_message(data).TYPE <= 95, label


def test_shared_clearing_examples_add_up_and_clear() -> None:
    from p2pd.market.sharing import add, clear_curves
    from protocol.sharing import FillClaim, Share, ShareResult, ShareRound, ShareSum, unpack_vector

    doc = documented()
    broker = SigningKey.from_seed(bytes([0x61]) * 32).public
    rnd = decode_message(doc["s2s4-share-round"])
    share = decode_message(doc["s2s4-share"])
    bob_sum = decode_message(doc["s2s4-share-sum"])
    result = decode_message(doc["s2s4-share-result"])
    claim = decode_message(doc["s2s4-fill-claim"])
    assert isinstance(rnd, ShareRound) and isinstance(share, Share) and isinstance(bob_sum, ShareSum)
    assert isinstance(result, ShareResult) and isinstance(claim, FillClaim)
    r = result.result
    r.verify(broker)
    assert (r.grid, r.participants) == (rnd.grid, rnd.participants) and bob_sum.senders == rnd.participants
    # carol's sum: her own share (her curve minus what she sent bob) and bob's share to her.
    to_bob = [int.from_bytes(bytes([0x2B + i]) * 8, "big") for i in range(6)]
    carol_own = [(c - t) % 2**64 for c, t in zip([0, 0, 0, 1000, 1000, 1000], to_bob, strict=True)]
    carol_sum = add([carol_own, unpack_vector(share.share)])
    total = add([unpack_vector(bob_sum.sums), carol_sum])
    assert total == unpack_vector(r.supply) + unpack_vector(r.demand)
    cleared = clear_curves(r.grid, unpack_vector(r.supply), unpack_vector(r.demand))
    assert (cleared.price, cleared.volume_wh) == (r.price, r.volume_wh) == (80_000, 1000)
    assert (claim.supply_wh, claim.demand_wh) == (1200, 0)
