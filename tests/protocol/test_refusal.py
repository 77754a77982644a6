"""The refusal notice (docs/protocol.md §13.7): format, examples, the initiator's side."""

from __future__ import annotations

import pathlib
import re

import pytest
from p2pd_test_helpers import Community, session_for

from protocol import (
    REFUSAL_REASONS,
    LocalProtocolError,
    PeerRefused,
    Reason,
    Refusal,
    RemoteProtocolError,
    State,
    frame,
    refusal_frame,
)

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCK = re.compile(r'^```wire title="(refusal-[^"]+)"\n(.*?)^```$', re.M | re.S)


def doc_examples() -> dict[str, bytes]:
    return {label: bytes.fromhex("".join(body.split()))
            for label, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))}


def test_the_documented_examples_are_what_the_code_sends_and_reads() -> None:
    examples = doc_examples()
    assert examples["refusal-rate-limited"] == refusal_frame(Reason.RATE_LIMITED, 0.5)
    assert examples["refusal-too-many-connections"] == refusal_frame(Reason.TOO_MANY_CONNECTIONS, 1.0)
    for data in examples.values():
        assert len(data) == 2 + 17 and data[:2] == b"\x00\x11"
    assert Refusal.parse(examples["refusal-rate-limited"][2:]) == Refusal(Reason.RATE_LIMITED, 500)


def test_parse_accepts_only_notices_and_only_pre_auth_reasons() -> None:
    body = refusal_frame(Reason.SHUTDOWN, 2.0)[2:]
    assert Refusal.parse(body) == Refusal(Reason.SHUTDOWN, 2000)
    assert Refusal.parse(body[:-1]) is None and Refusal.parse(b"x" + body[1:]) is None
    # An unauthenticated notice cannot claim REVOKED, nor an unknown code.
    for code in (int(Reason.REVOKED), 250):
        forged = body[:12] + bytes([code]) + body[13:]
        assert Refusal.parse(forged) == Refusal(Reason.PROTOCOL_ERROR, 2000)
    huge = body[:13] + (2**32 - 1).to_bytes(4, "big")
    assert Refusal.parse(huge) == Refusal(Reason.SHUTDOWN, 3_600_000)
    with pytest.raises(LocalProtocolError):
        refusal_frame(Reason.BANNED, 1.0)
    assert REFUSAL_REASONS == {Reason.RATE_LIMITED, Reason.TOO_MANY_CONNECTIONS, Reason.SHUTDOWN}


def test_an_initiator_reports_the_notice_instead_of_a_handshake_failure() -> None:
    com = Community()
    ini = session_for(com.member("alice"), com, initiator=True)
    ini.data_to_send()  # message 1
    ini.receive_data(refusal_frame(Reason.RATE_LIMITED, 0.5), 0.0)
    with pytest.raises(PeerRefused) as info:
        ini.next_event()
    assert info.value.reason is Reason.RATE_LIMITED and info.value.retry_after == 0.5
    assert ini.state is State.CLOSED and ini.close_reason is Reason.RATE_LIMITED
    assert ini.refusal == Refusal(Reason.RATE_LIMITED, 500)
    assert ini.data_to_send() == b""  # nothing is sent back


def test_a_short_frame_that_is_not_a_notice_still_fails_the_handshake() -> None:
    com = Community()
    ini = session_for(com.member("alice"), com, initiator=True)
    ini.receive_data(frame(b"p2pd-refusal!" + bytes(4)), 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        ini.next_event()
    assert info.value.reason is Reason.HANDSHAKE_FAILED and ini.refusal is None
