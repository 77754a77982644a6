"""docs/protocol.md section 15: the S2-S4 examples match the code and verify."""

from __future__ import annotations

import importlib.util
import pathlib
import re

from protocol import SigningKey, decode_message
from protocol.brokerage import MatchPropose
from protocol.delegation import Delegation, DelegationGossip
from protocol.receipt_log import GENESIS, EquivocationProof, LogEntries, LogRequest, entry_hash

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
    for e in page.entries:  # the entries reproduce bob's signed head
        h = entry_hash(h, e.seq, e.receipt)
    assert h == page.head.head_hash and page.head == proof.head_a
    for label, data in doc.items():
        if label not in ("s2s4-delegation", "s2s4-agent-order", "s2s4-equivocation-proof"):
            assert 64 <= decode_message(data).TYPE <= 95, label
