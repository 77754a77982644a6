"""Session handshake: credential checks in both roles (docs/protocol.md section 4)."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import NOW, Community, Identity, SessionPair, session_for

from protocol import (
    NEED_DATA,
    ConnectionClosed,
    CredentialError,
    HandshakeComplete,
    Reason,
    RemoteProtocolError,
    SigningKey,
    State,
    decode_message,
    frame,
)
from protocol.handshake import NoiseHandshake


def pair(com: Community, client: Identity, server: Identity, server_com: Community | None = None,
         client_com: Community | None = None) -> SessionPair:
    return SessionPair(session_for(client, client_com or com, initiator=True),
                       session_for(server, server_com or com, initiator=False))


def test_handshake_completes_and_exposes_peer() -> None:
    com = Community()
    alice, bob = com.member("alice"), com.member("bob")
    p = pair(com, alice, bob)
    cev, sev = p.pump()
    assert [type(e) for e in cev] == [HandshakeComplete] == [type(e) for e in sev]
    assert isinstance(cev[0], HandshakeComplete) and isinstance(sev[0], HandshakeComplete)
    assert cev[0].peer == bob.credential and sev[0].peer == alice.credential
    assert cev[0].handshake_hash == sev[0].handshake_hash and len(cev[0].handshake_hash) == 64
    assert p.client.peer == bob.credential and p.server.peer == alice.credential
    assert p.client.state is State.ESTABLISHED and p.server.state is State.ESTABLISHED


def test_remote_static_available_after_handshake_on_both_sides() -> None:
    com = Community()
    alice, bob = com.member("alice"), com.member("bob")
    p = pair(com, alice, bob)
    p.pump()
    assert p.client._hs.remote_static == bob.noise_public
    assert p.server._hs.remote_static == alice.noise_public


def test_frame_sizes() -> None:
    com = Community()
    p = pair(com, com.member("alice"), com.member("bob"))
    msg1 = p.client.data_to_send()
    assert len(msg1) == 34 and msg1[:2] == b"\x00\x20"
    p.server.receive_data(msg1, NOW)
    assert p.server.next_event() is NEED_DATA
    msg2 = p.server.data_to_send()
    assert int.from_bytes(msg2[:2], "big") == len(msg2) - 2 <= 1024


def run_to_responder_refusal(com: Community, client: Identity, server: Identity) -> tuple[
        SessionPair, RemoteProtocolError]:
    p = pair(com, client, server)
    p.transfer(p.client, p.server)  # msg1
    cev = p.transfer(p.server, p.client)  # msg2; the initiator accepts bob
    assert [type(e) for e in cev] == [HandshakeComplete]
    p.server.receive_data(p.client.data_to_send(), NOW)  # msg3
    with pytest.raises(RemoteProtocolError) as info:
        p.server.next_event()
    assert p.server.state is State.CLOSED
    return p, info.value


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda com: com.member("mallory", issuer=SigningKey.generate()), Reason.UNTRUSTED_ISSUER),
        (lambda com: com.member("alice", community="elsewhere"), Reason.WRONG_COMMUNITY),
        (lambda com: com.member("alice", valid_until=int(NOW) - 301), Reason.CREDENTIAL_EXPIRED),
        (lambda com: com.member("alice", valid_from=int(NOW) + 301), Reason.CREDENTIAL_NOT_YET_VALID),
    ],
)
def test_responder_refuses_initiator_with_encrypted_close(make: object, reason: Reason) -> None:
    com = Community()
    client = make(com)  # type: ignore[operator]
    p, err = run_to_responder_refusal(com, client, com.member("bob"))
    assert isinstance(err, CredentialError) and err.reason is reason
    # The initiator can read the Close: it is encrypted under the session keys.
    cev = p.transfer(p.server, p.client)
    assert cev == [ConnectionClosed(reason, str(err), True)]
    assert p.client.state is State.CLOSED and p.client.close_reason is reason


def test_responder_refuses_revoked_initiator() -> None:
    com = Community()
    alice = com.member("alice")
    com.revoked.add("alice")
    p, err = run_to_responder_refusal(com, alice, com.member("bob"))
    assert err.reason is Reason.REVOKED
    assert p.transfer(p.server, p.client)[0] == ConnectionClosed(Reason.REVOKED, str(err), True)


def test_stolen_credential_replayed_with_other_key() -> None:
    """Mallory has alice's credential but not alice's Noise private key."""
    com = Community()
    alice, mallory = com.member("alice"), com.member("mallory")
    thief = Identity("alice", mallory.signing, mallory.noise_private, mallory.noise_public,
                     alice.credential)
    p, err = run_to_responder_refusal(com, thief, com.member("bob"))
    assert isinstance(err, CredentialError) and err.reason is Reason.KEY_MISMATCH
    data = p.server.data_to_send()
    assert data  # one encrypted Close frame
    assert b"does not bind" not in data  # the Close is not sent in plaintext
    p.client.receive_data(data, NOW)
    closed = p.client.next_event()
    assert isinstance(closed, ConnectionClosed) and closed.reason is Reason.KEY_MISMATCH
    assert closed.by_peer


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda com: com.member("bob", issuer=SigningKey.generate()), Reason.UNTRUSTED_ISSUER),
        (lambda com: com.member("bob", community="elsewhere"), Reason.WRONG_COMMUNITY),
        (lambda com: com.member("bob", valid_until=int(NOW) - 301), Reason.CREDENTIAL_EXPIRED),
        (lambda com: com.member("bob", noise_public=bytes(range(32))), Reason.KEY_MISMATCH),
    ],
)
def test_initiator_refusing_responder_sends_nothing(make: object, reason: Reason) -> None:
    com = Community()
    p = pair(com, com.member("alice"), make(com))  # type: ignore[operator]
    p.transfer(p.client, p.server)
    p.client.receive_data(p.server.data_to_send(), NOW)
    with pytest.raises(CredentialError) as info:
        p.client.next_event()
    assert info.value.reason is reason
    assert p.client.state is State.CLOSED
    assert p.client.data_to_send() == b""  # no msg3, no Close: silent TCP close


def test_initiator_refuses_revoked_responder() -> None:
    com = Community()
    bob = com.member("bob")
    com.revoked.add("bob")
    p = pair(com, com.member("alice"), bob)
    p.transfer(p.client, p.server)
    p.client.receive_data(p.server.data_to_send(), NOW)
    with pytest.raises(CredentialError) as info:
        p.client.next_event()
    assert info.value.reason is Reason.REVOKED
    assert p.client.data_to_send() == b""


def test_different_community_prologue_fails_handshake() -> None:
    com, other = Community(), Community(name="other")
    other.issuer = com.issuer
    p = pair(com, com.member("alice"), com.member("bob"), server_com=other)
    p.transfer(p.client, p.server)
    p.client.receive_data(p.server.data_to_send(), NOW)
    with pytest.raises(RemoteProtocolError) as info:
        p.client.next_event()
    assert info.value.reason is Reason.HANDSHAKE_FAILED
    assert p.client.data_to_send() == b""


def test_non_hello_payload_is_handshake_failed() -> None:
    com = Community()
    alice = com.member("alice")
    hs = NoiseHandshake(initiator=False, static_private=alice.noise_private, community=com.name)
    bob = com.member("bob")
    client = session_for(bob, com, initiator=True)
    hs.read_message(client.data_to_send()[2:])
    client.receive_data(frame(hs.write_message(bytes.fromhex("93010201"))), NOW)
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.reason is Reason.HANDSHAKE_FAILED
    assert decode_message(bytes.fromhex("93010201"))  # a valid Ping, just not a Hello
