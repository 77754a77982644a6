"""Membership credentials and the order of their checks (docs/protocol.md section 6)."""

from __future__ import annotations

import dataclasses

import pytest
from p2pd_test_helpers import NOW, Community, Identity

from protocol import (
    Credential,
    CredentialError,
    DecodeError,
    LocalProtocolError,
    Reason,
    SigningKey,
    TrustPolicy,
    check_credential,
    pack,
)

SKEW = 300


def check(com: Community, ident: Identity, now: float = NOW, noise_pk: bytes | None = None) -> None:
    com.policy().check(ident.credential, now, noise_pk=noise_pk)


def reason_of(com: Community, ident: Identity, now: float = NOW, noise_pk: bytes | None = None) -> Reason:
    with pytest.raises(CredentialError) as info:
        check(com, ident, now, noise_pk)
    return info.value.reason


def test_valid_credential() -> None:
    com = Community()
    alice = com.member("alice")
    check(com, alice, noise_pk=alice.noise_public)


def test_wrong_issuer() -> None:
    com = Community()
    mallory = com.member("mallory", issuer=SigningKey.generate())
    assert reason_of(com, mallory) is Reason.UNTRUSTED_ISSUER


def test_bad_signature_bit_flip() -> None:
    com = Community()
    cred = com.member("alice").credential
    sig = bytearray(cred.signature)
    sig[0] ^= 1
    forged = dataclasses.replace(cred, signature=bytes(sig))
    with pytest.raises(CredentialError) as info:
        com.policy().check(forged, NOW)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_changed_field_breaks_signature() -> None:
    com = Community()
    cred = com.member("alice").credential
    forged = dataclasses.replace(cred, role="broker")
    with pytest.raises(CredentialError) as info:
        com.policy().check(forged, NOW)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_other_community() -> None:
    com = Community()
    stranger = com.member("alice", community="othercommunity")
    assert reason_of(com, stranger) is Reason.WRONG_COMMUNITY


def test_validity_window_edges() -> None:
    com = Community()
    start, end = int(NOW), int(NOW) + 1000
    ident = com.member("alice", valid_from=start, valid_until=end)
    # Accepted for valid_from - 300 <= now < valid_until + 300.
    check(com, ident, now=start - SKEW)
    assert reason_of(com, ident, now=start - SKEW - 0.001) is Reason.CREDENTIAL_NOT_YET_VALID
    assert reason_of(com, ident, now=start - 10_000) is Reason.CREDENTIAL_NOT_YET_VALID
    check(com, ident, now=end + SKEW - 0.001)
    assert reason_of(com, ident, now=end + SKEW) is Reason.CREDENTIAL_EXPIRED
    assert reason_of(com, ident, now=end + 10_000) is Reason.CREDENTIAL_EXPIRED


def test_revoked() -> None:
    com = Community()
    alice = com.member("alice")
    com.revoked.add("alice")
    assert reason_of(com, alice) is Reason.REVOKED


def test_key_mismatch() -> None:
    com = Community()
    alice = com.member("alice")
    bob = com.member("bob")
    assert reason_of(com, alice, noise_pk=bob.noise_public) is Reason.KEY_MISMATCH


def test_check_order_first_failure_wins() -> None:
    com = Community()
    bad = com.member("a", issuer=SigningKey.generate(), community="other", valid_until=0)
    assert reason_of(com, bad, noise_pk=bytes(32)) is Reason.UNTRUSTED_ISSUER
    other = com.member("b", community="other", valid_until=0)
    assert reason_of(com, other, noise_pk=bytes(32)) is Reason.WRONG_COMMUNITY
    expired = com.member("c", valid_from=0, valid_until=1)
    com.revoked.add("c")
    assert reason_of(com, expired, noise_pk=bytes(32)) is Reason.CREDENTIAL_EXPIRED
    revoked = com.member("c")
    assert reason_of(com, revoked, noise_pk=bytes(32)) is Reason.REVOKED


def test_check_credential_function_matches_policy() -> None:
    com = Community()
    alice = com.member("alice")
    check_credential(alice.credential, now=NOW, community=com.name,
                     trusted_issuers={com.issuer.public}, noise_pk=alice.noise_public)
    policy = TrustPolicy(com.name, frozenset())
    with pytest.raises(CredentialError):
        policy.check(alice.credential, NOW)


def test_credential_error_is_remote() -> None:
    from protocol import RemoteProtocolError
    assert issubclass(CredentialError, RemoteProtocolError)


def test_signed_body_is_domain_plus_nine_fields() -> None:
    com = Community()
    cred = com.member("alice").credential
    from protocol import verify
    verify(cred.issuer_pk, cred.signature, "p2pd/credential/1", cred.to_wire()[:9])
    assert len(cred.to_wire()) == 10


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("community", ""), ("community", "-lead"), ("community", "a" * 65), ("community", "a b"),
        ("member_id", "é"), ("role", "admin"), ("metering_point", "EAN-1"),
        ("metering_point", "1" * 35), ("sign_pk", b"\x00" * 31), ("noise_pk", b"\x00" * 33),
        ("valid_from", -1), ("valid_until", 2**40 + 1), ("issuer_pk", "x" * 32),
        ("signature", b"\x00" * 63),
    ],
)
def test_decode_rejects_field_violations(field: str, value: object) -> None:
    cred = Community().member("alice").credential
    wire = cred.to_wire()
    wire[list(Credential.__dataclass_fields__).index(field)] = value
    with pytest.raises(DecodeError):
        Credential.decode(pack(wire))


def test_issue_refuses_bad_fields() -> None:
    with pytest.raises(LocalProtocolError):
        Community().member("alice", role="admin")
