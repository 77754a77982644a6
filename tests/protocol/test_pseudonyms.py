"""Pseudonym certificates, epoch keys, sealed intents and owner proofs (docs/protocol.md 12.8)."""

from __future__ import annotations

import os

import pytest

from protocol import (
    EPOCH_LEN,
    Credential,
    CredentialError,
    DecodeError,
    EpochKeyAnnounce,
    Order,
    OrderGossip,
    OwnerProof,
    Pseudonym,
    PseudonymIssuer,
    PseudonymKeys,
    QuotaExceeded,
    Reason,
    SignatureError,
    SigningKey,
    TakeIntent,
    check_pseudonym,
    decode_message,
    encode_message,
    finish_pseudonym,
    intent_context,
    intent_payload,
    open_sealed,
    read_intent_payload,
    request_pseudonym,
    seal,
    sign_owner_proof,
    verify_owner_proof,
)

COMMUNITY = "example"
EPOCH = 20_600
NOW = EPOCH * EPOCH_LEN + 3600


def _member(issuer: SigningKey, name: str, role: str = "prosumer") -> Credential:
    key = SigningKey.generate()
    return Credential.issue(issuer, community=COMMUNITY, member_id=name, role=role,
                            metering_point="EAN" + name, sign_pk=key.public, noise_pk=os.urandom(32),
                            valid_from=0, valid_until=2**40 - 1)


def _pseudonym(service: PseudonymIssuer, cred: Credential, index: int = 0,
               secret: bytes = b"s" * 32) -> tuple[Pseudonym, PseudonymKeys]:
    key = service.epoch_key(EPOCH)
    req = request_pseudonym(key, PseudonymKeys.derive(secret, EPOCH, index), salt=os.urandom(48),
                            random=os.urandom(272))
    [sig] = service.grant(cred, EPOCH, [req.blinded_msg], os.urandom)
    return finish_pseudonym(key, req, sig), req.keys


@pytest.fixture(scope="module")
def service() -> PseudonymIssuer:
    return PseudonymIssuer(SigningKey.generate(), COMMUNITY, quota=3)


def test_a_pseudonym_verifies_for_anyone_and_names_nobody(service: PseudonymIssuer) -> None:
    cred = _member(service.issuer, "alice")
    p, keys = _pseudonym(service, cred)
    keys_by_epoch = {EPOCH: service.epoch_key(EPOCH)}
    check_pseudonym(p, keys_by_epoch, community=COMMUNITY, now=NOW, max_ahead=172800)
    wire = p.encode()
    assert b"alice" not in wire and cred.metering_point.encode() not in wire
    assert cred.sign_pk not in wire and cred.noise_pk not in wire
    assert p.member_id == "ps:" + p.order_id.hex() and len(wire) == 331
    # the same keys again: the same pseudonym (a restarted node recreates its keys)
    assert PseudonymKeys.derive(b"s" * 32, EPOCH, 0).signing.public == p.sign_pk == keys.signing.public


def test_validity_window_wrong_epoch_key_and_forged_token(service: PseudonymIssuer) -> None:
    p, _ = _pseudonym(service, _member(service.issuer, "bob"))
    keys = {EPOCH: service.epoch_key(EPOCH)}
    for now, reason in ((EPOCH * EPOCH_LEN - 301, Reason.CREDENTIAL_NOT_YET_VALID),
                        ((EPOCH + 1) * EPOCH_LEN + 172800 + 300, Reason.CREDENTIAL_EXPIRED)):
        with pytest.raises(CredentialError) as err:
            check_pseudonym(p, keys, community=COMMUNITY, now=now, max_ahead=172800)
        assert err.value.reason is reason
    with pytest.raises(CredentialError) as err:
        check_pseudonym(p, {}, community=COMMUNITY, now=NOW, max_ahead=0)
    assert err.value.reason is Reason.UNTRUSTED_ISSUER
    for forged in (Pseudonym(p.epoch, os.urandom(32), p.box_pk, p.token),
                   Pseudonym(p.epoch, p.sign_pk, p.box_pk, bytes(255) + b"\x01")):
        with pytest.raises(CredentialError) as err:
            check_pseudonym(forged, keys, community=COMMUNITY, now=NOW, max_ahead=0)
        assert err.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(CredentialError):
        check_pseudonym(p, keys, community="elsewhere", now=NOW, max_ahead=0)


def test_the_issuer_keeps_the_quota_and_refuses_outsiders_and_brokers(service: PseudonymIssuer) -> None:
    cred = _member(service.issuer, "carol")
    key = service.epoch_key(EPOCH)
    blinded = [request_pseudonym(key, PseudonymKeys.derive(b"c" * 32, EPOCH, i), salt=os.urandom(48),
                                 random=os.urandom(272)).blinded_msg for i in range(4)]
    with pytest.raises(QuotaExceeded):
        service.grant(cred, EPOCH, blinded, os.urandom)
    assert len(service.grant(cred, EPOCH, blinded[:3], os.urandom)) == 3
    with pytest.raises(QuotaExceeded):
        service.grant(cred, EPOCH, blinded[3:], os.urandom)
    assert len(service.grant(cred, EPOCH + 1, blinded[3:], os.urandom)) == 1  # a new epoch, a new quota
    with pytest.raises(CredentialError):
        service.grant(_member(SigningKey.generate(), "mallory"), EPOCH, blinded[:1], os.urandom)
    with pytest.raises(CredentialError):
        service.grant(_member(service.issuer, "broker", role="broker"), EPOCH, blinded[:1], os.urandom)


def test_sealed_intent_opens_only_with_the_pseudonym_key_and_context(service: PseudonymIssuer) -> None:
    p, keys = _pseudonym(service, _member(service.issuer, "dave"))
    ctx = intent_context(COMMUNITY, p.order_id, b"\x07" * 16)
    sealed = seal(p.box_pk, ctx, intent_payload("erin"))
    assert b"erin" not in sealed and len(sealed) == 32 + 6 + 16
    assert read_intent_payload(open_sealed(keys.box_private, ctx, sealed)) == "erin"
    with pytest.raises(DecodeError):
        open_sealed(keys.box_private, intent_context(COMMUNITY, p.order_id, b"\x08" * 16), sealed)
    with pytest.raises(DecodeError):
        open_sealed(os.urandom(32), ctx, sealed)


def test_owner_proof_binds_order_owner_and_taker(service: PseudonymIssuer) -> None:
    p, keys = _pseudonym(service, _member(service.issuer, "frank"))
    args = {"community": COMMUNITY, "order_id": p.order_id, "owner_credential_id": b"o" * 32,
            "taker_credential_id": b"t" * 32}
    sig = sign_owner_proof(keys.signing, **args)
    verify_owner_proof(p.sign_pk, sig, **args)
    with pytest.raises(SignatureError):
        verify_owner_proof(p.sign_pk, sig, **{**args, "owner_credential_id": b"x" * 32})


def test_messages_round_trip_and_order_gossip_takes_either_kind(service: PseudonymIssuer) -> None:
    p, keys = _pseudonym(service, _member(service.issuer, "gina"))
    slot = (EPOCH * EPOCH_LEN // 900 + 20) * 900
    order = Order.create(keys.signing, order_id=p.order_id, member_id=p.member_id, side="sell",
                         slot_start=slot, slot_len=900, wh=1500, price=93000, expiry=slot - 300)
    for msg in (OrderGossip(order, p, 8), OrderGossip(order, _member(service.issuer, "hal"), 8),
                EpochKeyAnnounce(service.epoch_key(EPOCH)),
                TakeIntent(p.order_id, b"\x02" * 16, bytes(54), 7), OwnerProof(p.order_id, bytes(64))):
        assert decode_message(encode_message(msg)) == msg
    assert len(encode_message(OrderGossip(order, p, 8))) <= 490


def test_a_full_gossip_batch_of_pseudonymous_orders_fits_one_frame(service: PseudonymIssuer) -> None:
    from protocol import BATCH_MAX, NOISE_MAX_FRAME, GossipBatch

    p, keys = _pseudonym(service, _member(service.issuer, "ivy"))
    slot = (EPOCH * EPOCH_LEN // 900 + 20) * 900
    order = Order.create(keys.signing, order_id=p.order_id, member_id=p.member_id, side="sell",
                         slot_start=slot, slot_len=900, wh=10_000_000, price=100_000_000,
                         expiry=slot - 300)
    batch = GossipBatch(tuple(OrderGossip(order, p, 16) for _ in range(BATCH_MAX)), ())
    assert len(encode_message(batch)) + 16 <= NOISE_MAX_FRAME  # plus the AEAD tag
