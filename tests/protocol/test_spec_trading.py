"""docs/protocol.md section 12.6: the trading examples match the code.

The blocks labelled ``msgpack title="trading-..."`` are re-derived from the
fixed keys of the worked example; a wire change in protocol/trading.py that is
not reflected in the document fails here. The second test checks what a
reader can check with the document alone: the example order's signature
verifies with alice's public key from section 11.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

from protocol import decode_message, verify
from protocol.trading import ORDER_DOMAIN, TRADE_DOMAIN, Order, OrderGossip, Take, TradeAccepted

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
BLOCK = re.compile(r'^```(msgpack|hex) title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def blocks(kind: str) -> dict[str, bytes]:
    return {label: bytes.fromhex("".join(body.split()))
            for k, label, body in BLOCK.findall(DOC.read_text(encoding="utf-8")) if k == kind}


def generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "make_trading_examples", ROOT / "docs" / "examples" / "make_trading_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trading_examples_match_the_code() -> None:
    documented = {k: v for k, v in blocks("msgpack").items() if k.startswith("trading-")}
    derived = generator().examples()  # type: ignore[attr-defined]
    assert documented.keys() == derived.keys()
    for label, data in derived.items():
        assert documented[label].hex() == data.hex(), f"block {label!r} drifted from the code"


def test_examples_verify_with_the_documented_keys() -> None:
    doc = blocks("msgpack")
    hexes = blocks("hex")
    alice = hexes["initiator-ed25519-public"]
    bob = hexes["responder-ed25519-public"]
    order = Order.decode(doc["trading-order"])
    verify(alice, order.signature, ORDER_DOMAIN, order.to_wire()[:-1])
    gossip = decode_message(doc["trading-order-gossip"])
    assert isinstance(gossip, OrderGossip) and gossip.order == order and gossip.hops == 8
    take = decode_message(doc["trading-take"])
    assert isinstance(take, Take)
    verify(bob, take.taker_sig, TRADE_DOMAIN, take.terms.to_wire())
    accepted = decode_message(doc["trading-trade-accepted"])
    assert isinstance(accepted, TradeAccepted)
    accepted.receipt.verify(alice, bob)
    assert accepted.receipt.terms.amount == 1000 * 93000 // 1000


def test_pseudonymous_examples_check_with_the_document_alone() -> None:
    """Section 12.8: the token verifies under the epoch key, the order under the pseudonym,
    the owner proof names alice's and bob's credentials, and the take names alice."""
    from protocol import (
        EpochKeyAnnounce,
        OwnerProof,
        Pseudonym,
        TakeIntent,
        check_pseudonym,
        epoch_of,
    )
    from protocol.pseudonyms import anon_order_id, verify_owner_proof

    doc = blocks("msgpack")
    key = decode_message(doc["trading-anon-epoch-key-announce"])
    gossip = decode_message(doc["trading-anon-order-gossip"])
    assert isinstance(key, EpochKeyAnnounce) and isinstance(gossip, OrderGossip)
    key.epoch_key.verify_signature()
    pseudonym = gossip.credential
    assert isinstance(pseudonym, Pseudonym) and pseudonym.epoch == epoch_of(1780000000)
    check_pseudonym(pseudonym, {pseudonym.epoch: key.epoch_key}, community="example", now=1780000000,
                    max_ahead=172800)
    order = gossip.order
    assert order.order_id == anon_order_id(pseudonym.sign_pk) and order.member_id == pseudonym.member_id
    order.verify(pseudonym.sign_pk)
    intent = decode_message(doc["trading-anon-take-intent"])
    assert isinstance(intent, TakeIntent) and intent.order_id == order.order_id and b"bob" not in intent.sealed
    proof = decode_message(doc["trading-anon-owner-proof"])
    assert isinstance(proof, OwnerProof)
    accepted = decode_message(doc["trading-trade-accepted"])
    assert isinstance(accepted, TradeAccepted)
    # The credential ids of alice and bob are those of the section 12.6 gossip and a reissue of bob's.
    named = decode_message(doc["trading-order-gossip"])
    assert isinstance(named, OrderGossip)
    take = decode_message(doc["trading-anon-take"])
    assert isinstance(take, Take) and take.terms.order_id == order.order_id
    assert (take.terms.seller, take.terms.buyer) == ("alice", "bob")
    taker_ids = [c.credential_id for c in generator().bob_credentials()]  # type: ignore[attr-defined]
    verify_owner_proof(pseudonym.sign_pk, proof.signature, community="example", order_id=order.order_id,
                       owner_credential_id=named.credential.credential_id, taker_credential_id=taker_ids[0])
