"""Revocation lists: signing, verification, matching, wire form and limits."""

from __future__ import annotations

import dataclasses

import pytest
from p2pd_test_helpers import NOW, Community

from protocol import (
    DecodeError,
    LocalProtocolError,
    RevocationAnnounce,
    RevocationList,
    SignatureError,
    SigningKey,
    decode_message,
    encode_message,
    issue_revocation,
)
from protocol.revocation import MAX_REVOKED_MEMBERS


def test_issued_list_verifies_and_matches_members_and_credentials() -> None:
    com = Community()
    mallory, alice, bob = com.member("mallory"), com.member("alice"), com.member("bob")
    rl = issue_revocation(com.issuer, ["mallory"], serial=3, now=NOW,
                          credential_ids=[bob.credential.credential_id])
    rl.verify_signature()
    assert rl.revokes(mallory.credential) and rl.revokes(bob.credential)
    assert not rl.revokes(alice.credential)


def test_list_only_applies_to_its_own_issuers_credentials() -> None:
    com, other = Community(), Community()
    rl = issue_revocation(other.issuer, ["mallory"], serial=1, now=NOW)
    assert not rl.revokes(com.member("mallory").credential)


@pytest.mark.parametrize("change", [
    {"serial": 4}, {"member_ids": ()}, {"issued_at": int(NOW) + 1},
    {"credential_ids": (bytes(32),)}, {"issuer_pk": SigningKey.generate().public},
])
def test_any_change_breaks_the_signature(change: dict[str, object]) -> None:
    rl = issue_revocation(SigningKey.generate(), ["mallory"], serial=3, now=NOW)
    with pytest.raises(SignatureError):
        dataclasses.replace(rl, **change).verify_signature()  # type: ignore[arg-type]


def test_signature_is_domain_separated() -> None:
    key = SigningKey.generate()
    rl = issue_revocation(key, ["m"], serial=1, now=NOW)
    forged = dataclasses.replace(rl, signature=key.sign("p2pd/credential/1", rl.body()))
    with pytest.raises(SignatureError):
        forged.verify_signature()


def test_announce_round_trips_and_ids_are_canonical() -> None:
    rl = issue_revocation(SigningKey.generate(), ["zed", "amy", "zed"], serial=7, now=NOW)
    assert rl.member_ids == ("amy", "zed")
    msg = RevocationAnnounce(rl)
    assert msg.TYPE == 18 and msg.CATEGORY == "control"
    assert decode_message(encode_message(msg)) == msg


def test_limits_hold_and_a_full_list_fits_one_frame() -> None:
    key = SigningKey.generate()
    ids = [f"member-{i:057d}" for i in range(MAX_REVOKED_MEMBERS)]  # 64-byte ids
    rl = issue_revocation(key, ids, serial=1, now=NOW, credential_ids=[bytes([i]) * 32 for i in range(256)])
    assert len(encode_message(RevocationAnnounce(rl))) < 65519 - 16
    with pytest.raises(LocalProtocolError):
        issue_revocation(key, ids + ["one-more"], serial=2, now=NOW)
    with pytest.raises(LocalProtocolError):
        issue_revocation(key, ["not an id!"], serial=2, now=NOW)
    wire = rl.to_wire()
    wire[3] = ids + ["x"]
    with pytest.raises(DecodeError):
        RevocationList.from_wire(wire)
