"""docs/protocol.md section 12.9: the relayed-take examples match the code and verify.

A reader can check them with the document alone: the take carries bob's
credential of section 11, its signature is the ``Take``'s of section 12.6,
and alice's refusal verifies with her public key.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from protocol import (
    RELAY_HOPS,
    DecodeError,
    Reason,
    RelayedAnswer,
    RelayedTake,
    SignatureError,
    Take,
    decode_message,
)
from protocol.relay import TradeRefusal

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
BLOCK = re.compile(r'^```(msgpack|hex) title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def blocks() -> dict[str, bytes]:
    return {label: bytes.fromhex("".join(body.split()))
            for _, label, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))}


def generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "make_relay_examples", ROOT / "docs" / "examples" / "make_relay_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relay_examples_match_the_code() -> None:
    documented = {k: v for k, v in blocks().items() if k.startswith("relay-")}
    derived = generator().examples()  # type: ignore[attr-defined]
    assert documented.keys() == derived.keys()
    for label, data in derived.items():
        assert documented[label].hex() == data.hex(), f"block {label!r} drifted from the code"


def test_examples_verify_with_the_documented_keys() -> None:
    doc = blocks()
    take = decode_message(doc["relay-take"])
    assert isinstance(take, RelayedTake) and (take.owner, take.hops) == ("alice", RELAY_HOPS)
    assert take.credential.encode() == doc["responder-credential"]
    direct = decode_message(doc["trading-take"])
    assert isinstance(direct, Take) and (direct.terms, direct.taker_sig) == (take.terms, take.taker_sig)
    forwarded = decode_message(doc["relay-take-forwarded"])
    assert isinstance(forwarded, RelayedTake) and forwarded.hops == 0
    assert forwarded.terms == take.terms and forwarded.credential == take.credential
    accepted = decode_message(doc["relay-answer-accepted"])
    assert isinstance(accepted, RelayedAnswer) and accepted.refusal is None and accepted.receipt is not None
    accepted.receipt.verify(doc["initiator-ed25519-public"], doc["responder-ed25519-public"])
    refused = decode_message(doc["relay-answer-refused"])
    assert isinstance(refused, RelayedAnswer) and refused.receipt is None and refused.refusal is not None
    r = refused.refusal
    assert (r.trade_id, r.owner, r.reason_code, r.remaining_wh) == (b"\x03" * 16, "alice",
                                                                     Reason.INSUFFICIENT, 500)
    r.verify(doc["initiator-ed25519-public"])
    with pytest.raises(SignatureError):  # a relay that changes a field breaks the signature
        TradeRefusal(r.trade_id, r.owner, r.reason, 900, r.message, r.signature).verify(
            doc["initiator-ed25519-public"])


def test_an_answer_carries_exactly_one_outcome_for_its_trade() -> None:
    doc = blocks()
    accepted = decode_message(doc["relay-answer-accepted"])
    refused = decode_message(doc["relay-answer-refused"])
    take = decode_message(doc["relay-take"])
    assert isinstance(accepted, RelayedAnswer) and isinstance(refused, RelayedAnswer)
    assert isinstance(take, RelayedTake)
    trade_id, receipt, _ = accepted.to_wire()
    refusal = refused.to_wire()[2]
    for fields in ([b"\x05" * 16, receipt, None],  # the receipt of another trade
                   [trade_id, None, None],  # no outcome
                   [trade_id, receipt, refusal]):  # two outcomes
        with pytest.raises(DecodeError):
            RelayedAnswer.from_wire(fields)
    with pytest.raises(DecodeError):  # relayed more than once
        RelayedTake.from_wire([take.owner, RELAY_HOPS + 1, *take.to_wire()[2:]])
