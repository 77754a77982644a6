"""Established sessions: transport errors, timers, keepalive, rekey, close (sections 3, 8, 9)."""

from __future__ import annotations

import pytest
from p2pd_test_helpers import NOW, Community, SessionPair, drain, session_for

from protocol import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    DecodeError,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    Reason,
    Rekey,
    RemoteProtocolError,
    Session,
    State,
    Timeouts,
    encode_message,
    frame,
    pack,
)


def established(timeouts: Timeouts = Timeouts()) -> SessionPair:
    com = Community()
    p = SessionPair(session_for(com.member("alice"), com, initiator=True, timeouts=timeouts),
                    session_for(com.member("bob"), com, initiator=False, timeouts=timeouts))
    p.pump()
    assert p.client.established and p.server.established
    return p


def fails_with(sess: Session, data: bytes, reason: Reason, now: float = NOW,
               exc: type[Exception] = RemoteProtocolError) -> RemoteProtocolError:
    sess.receive_data(data, now)
    with pytest.raises(exc) as info:
        drain(sess)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.reason is reason
    assert sess.state is State.CLOSED and sess.close_reason is reason
    return info.value


def peer_sees_close(p: SessionPair, src: Session, dst: Session, reason: Reason) -> None:
    events = p.transfer(src, dst)
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].reason is reason and events[0].by_peer


def one_frame(p: SessionPair) -> bytes:
    p.client.send(Ping(7))
    return p.client.data_to_send()


# --- transport integrity -----------------------------------------------------


@pytest.mark.parametrize("pos", [2, 10, -1])
def test_tampered_frame(pos: int) -> None:
    p = established()
    data = bytearray(one_frame(p))
    data[pos] ^= 0x01
    fails_with(p.server, bytes(data), Reason.DECRYPT_FAILED)
    # The server queued an encrypted Close the client can read.
    peer_sees_close(p, p.server, p.client, Reason.DECRYPT_FAILED)


def test_truncated_frame_body() -> None:
    p = established()
    data = one_frame(p)
    body = data[2:-1]
    fails_with(p.server, frame(body), Reason.DECRYPT_FAILED)


def test_frame_shorter_than_tag() -> None:
    p = established()
    fails_with(p.server, frame(b"x" * 15), Reason.DECRYPT_FAILED)


def test_replayed_frame() -> None:
    p = established()
    data = one_frame(p)
    p.server.receive_data(data, NOW)
    assert drain(p.server) == [Ping(7)]
    fails_with(p.server, data, Reason.DECRYPT_FAILED)


def test_reordered_frames() -> None:
    p = established()
    first = one_frame(p)
    second = one_frame(p)
    fails_with(p.server, second + first, Reason.DECRYPT_FAILED)


def test_largest_prefix_accepted_when_established() -> None:
    # The established limit is 65535, the largest u16: FRAME_TOO_LARGE cannot occur here.
    p = established()
    p.server.receive_data(b"\xff\xff" + bytes(1000), NOW)
    assert p.server.next_event() is NEED_DATA
    assert p.server.established


def test_largest_message_roundtrip() -> None:
    p = established()
    p.client._queue(Close(0, "x" * 200))
    assert p.transfer(p.client, p.server)[0] == ConnectionClosed(Reason.NORMAL, "x" * 200, True)


def test_zero_length_frame_when_established() -> None:
    p = established()
    fails_with(p.server, b"\x00\x00", Reason.PROTOCOL_ERROR)
    peer_sees_close(p, p.server, p.client, Reason.PROTOCOL_ERROR)


# --- handshake-state framing errors -------------------------------------------


def fresh() -> tuple[Session, Session]:
    com = Community()
    return (session_for(com.member("alice"), com, initiator=True),
            session_for(com.member("bob"), com, initiator=False))


def test_first_frame_over_32_bytes() -> None:
    _, server = fresh()
    fails_with(server, b"\x00\x21" + bytes(33), Reason.FRAME_TOO_LARGE)
    assert server.data_to_send() == b""


def test_first_frame_under_32_bytes() -> None:
    _, server = fresh()
    fails_with(server, frame(bytes(31)), Reason.HANDSHAKE_FAILED)
    assert server.data_to_send() == b""


def test_msg2_over_limit() -> None:
    client, _ = fresh()
    client.data_to_send()
    fails_with(client, b"\x04\x01", Reason.FRAME_TOO_LARGE)
    assert client.data_to_send() == b""


def test_msg3_over_limit() -> None:
    client, server = fresh()
    server.receive_data(client.data_to_send(), NOW)
    assert server.next_event() is NEED_DATA
    server.data_to_send()
    fails_with(server, b"\x04\x01", Reason.FRAME_TOO_LARGE)
    assert server.data_to_send() == b""


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_zero_length_frame_in_handshake(who: str) -> None:
    client, server = fresh()
    sess = client if who == "initiator" else server
    sess.data_to_send()
    fails_with(sess, b"\x00\x00", Reason.PROTOCOL_ERROR)
    assert sess.data_to_send() == b""


def test_random_bytes_instead_of_handshake() -> None:
    client, server = fresh()
    # Random msg2 for the initiator: AEAD fails.
    client.data_to_send()
    fails_with(client, frame(bytes(range(200))), Reason.HANDSHAKE_FAILED)
    assert client.data_to_send() == b""
    # Random msg3 for the responder.
    client2, server2 = fresh()
    server2.receive_data(client2.data_to_send(), NOW)
    drain(server2)
    server2.data_to_send()
    fails_with(server2, frame(bytes(range(200))), Reason.HANDSHAKE_FAILED)
    assert server2.data_to_send() == b""


def test_http_request_instead_of_handshake() -> None:
    _, server = fresh()
    fails_with(server, b"GET / HTTP/1.1\r\n\r\n", Reason.FRAME_TOO_LARGE)  # 'GE' = 18245


def test_low_order_ephemeral_in_msg1() -> None:
    _, server = fresh()
    fails_with(server, frame(bytes(32)), Reason.HANDSHAKE_FAILED)


@pytest.mark.parametrize("stage", ["msg1", "msg2", "msg3"])
def test_eof_mid_handshake(stage: str) -> None:
    client, server = fresh()
    if stage == "msg1":
        sess = server
    elif stage == "msg2":
        sess = client
        client.data_to_send()
    else:
        server.receive_data(client.data_to_send()[:10], NOW)  # a partial msg1 first
        sess = server
    sess.receive_data(b"", NOW)
    ev = sess.next_event()
    assert ev == ConnectionClosed(Reason.HANDSHAKE_FAILED, "peer closed during handshake", True)
    assert sess.state is State.CLOSED
    assert sess.next_event() is NEED_DATA


def test_eof_when_established() -> None:
    p = established()
    p.server.receive_data(b"", NOW)
    ev = p.server.next_event()
    assert isinstance(ev, ConnectionClosed) and ev.reason is Reason.PROTOCOL_ERROR


# --- timers -------------------------------------------------------------------


def test_handshake_stage_deadline_responder() -> None:
    client, server = fresh()
    assert server.get_timer() == NOW + 5
    server.handle_timer(NOW + 4.999)
    assert server.state is State.AWAIT_MSG1
    server.receive_data(client.data_to_send(), NOW + 4)
    drain(server)
    assert server.data_to_send()  # msg2
    assert server.get_timer() == NOW + 9  # the deadline restarts for msg3
    with pytest.raises(RemoteProtocolError) as info:
        server.handle_timer(NOW + 9)
    assert info.value.reason is Reason.TIMEOUT
    assert server.state is State.CLOSED and server.get_timer() is None
    assert server.data_to_send() == b""


def test_handshake_stage_deadline_initiator() -> None:
    client, _ = fresh()
    client.data_to_send()
    assert client.get_timer() == NOW + 5
    with pytest.raises(RemoteProtocolError) as info:
        client.handle_timer(NOW + 5)
    assert info.value.reason is Reason.TIMEOUT
    assert client.data_to_send() == b""


def test_ping_sent_after_interval_and_answered() -> None:
    p = established()
    assert p.client.get_timer() == NOW + 30
    p.client.handle_timer(NOW + 29)
    assert p.client.data_to_send() == b""
    p.now = NOW + 30
    p.client.handle_timer(p.now)
    assert p.client.get_timer() == NOW + 90  # ping outstanding: next is the idle timeout
    assert p.transfer(p.client, p.server) == [Ping(1)]  # surfaced, not answered ...
    assert p.server.data_to_send() == b""
    p.server.send(Pong(1))  # ... until the caller admits it and answers
    assert p.transfer(p.server, p.client) == [Pong(1)]  # surfaced too, after taking effect
    assert p.client.get_timer() == NOW + 60  # reset by the received Pong


def test_ping_payload_is_ping() -> None:
    p = established()
    p.client.handle_timer(NOW + 30)
    plaintext = p.server._transport.decrypt(p.client.data_to_send()[2:])  # type: ignore[union-attr]
    assert plaintext == encode_message(Ping(1))


def test_idle_timeout_sends_close() -> None:
    p = established()
    p.client.handle_timer(NOW + 30)
    p.transfer(p.client, p.server)
    p.server.data_to_send()  # the Pong is lost
    with pytest.raises(RemoteProtocolError) as info:
        p.client.handle_timer(NOW + 90)
    assert info.value.reason is Reason.TIMEOUT
    assert p.client.state is State.CLOSED
    peer_sees_close(p, p.client, p.server, Reason.TIMEOUT)


def test_any_frame_counts_as_activity() -> None:
    p = established()
    p.now = NOW + 80
    p.server.send(Ping(9))
    p.pump()
    p.client.handle_timer(NOW + 100)
    assert p.client.state is State.ESTABLISHED


# --- rekey --------------------------------------------------------------------


def test_rekey_after_message_count_both_directions() -> None:
    p = established(Timeouts(rekey_messages=3))
    for i in range(50):
        p.client.send(Ping(i))
        p.server.send(Ping(1000 + i))
        cev, sev = p.pump()
        # Every received message is surfaced, the Rekeys included.
        assert [e for e in cev if not isinstance(e, Rekey)] == [Ping(1000 + i)]
        assert [e for e in sev if not isinstance(e, Rekey)] == [Ping(i)]
    assert p.client.established and p.server.established
    assert p.client._sent_since_rekey < 3 and p.server._sent_since_rekey < 3


def test_rekey_frame_then_new_key() -> None:
    p = established(Timeouts(rekey_messages=1))
    p.client.send(Ping(1))
    data = p.client.data_to_send()
    # Ping frame, then the Rekey frame (encrypted under the old key).
    assert len(data) == (2 + 4 + 16) + (2 + 3 + 16)
    p.server.receive_data(data, NOW)
    assert drain(p.server) == [Ping(1), Rekey()]  # applied, then surfaced
    p.client.send(Ping(2))
    p.server.receive_data(p.client.data_to_send(), NOW)
    assert drain(p.server) == [Ping(2), Rekey()]
    assert p.server.established


def test_rekey_on_interval() -> None:
    p = established(Timeouts(rekey_interval=100, ping_interval=1000, idle_timeout=2000))
    assert p.client.get_timer() == NOW + 100
    p.client.handle_timer(NOW + 100)
    assert p.client.get_timer() == NOW + 200
    p.now = NOW + 100
    p.pump()
    p.client.send(Ping(3))
    assert p.transfer(p.client, p.server) == [Ping(3)]
    assert p.server.established


def test_missing_rekey_breaks_decryption() -> None:
    p = established(Timeouts(rekey_messages=1))
    p.client.send(Ping(1))
    data = p.client.data_to_send()
    assert len(data) == 22 + 21
    p.server.receive_data(data[:22], NOW)  # only the Ping; the Rekey frame is dropped
    assert drain(p.server) == [Ping(1)]
    p.client.send(Ping(2))
    fails_with(p.server, p.client.data_to_send(), Reason.DECRYPT_FAILED)


def test_nothing_follows_close() -> None:
    p = established(Timeouts(rekey_messages=1))
    p.client.close(Reason.NORMAL, "bye")
    data = p.client.data_to_send()
    assert len(data) == 2 + len(encode_message(Close(0, "bye"))) + 16


# --- close and misuse -----------------------------------------------------------


def test_close_with_reason_delivered() -> None:
    p = established()
    p.client.close(Reason.SHUTDOWN, "maintenance")
    assert p.client.state is State.CLOSED and p.client.close_reason is Reason.SHUTDOWN
    events = p.transfer(p.client, p.server)
    assert events == [ConnectionClosed(Reason.SHUTDOWN, "maintenance", True)]
    assert p.server.state is State.CLOSED and p.server.data_to_send() == b""
    # Anything after Close is ignored.
    p.server.receive_data(b"\x00\x00garbage", NOW)
    assert p.server.next_event() is NEED_DATA


def test_unknown_close_reason_reported_as_protocol_error() -> None:
    p = established()
    p.client._queue(Close(200, "?"))
    assert p.transfer(p.client, p.server) == [ConnectionClosed(Reason.PROTOCOL_ERROR, "?", True)]


def test_close_during_handshake_is_silent() -> None:
    client, _ = fresh()
    client.data_to_send()
    client.close(Reason.SHUTDOWN)
    assert client.state is State.CLOSED and client.data_to_send() == b""


def test_non_ascii_close_message_stays_valid() -> None:
    p = established()
    p.client.close(Reason.SHUTDOWN, "é" * 150)
    events = p.transfer(p.client, p.server)
    assert isinstance(events[0], ConnectionClosed) and events[0].reason is Reason.SHUTDOWN


def test_send_before_established() -> None:
    client, server = fresh()
    for sess in (client, server):
        with pytest.raises(LocalProtocolError):
            sess.send(Ping(1))


def test_send_after_close() -> None:
    p = established()
    p.client.close()
    with pytest.raises(LocalProtocolError):
        p.client.send(Ping(1))


@pytest.mark.parametrize("msg", [Close(0, ""), Rekey()])
def test_session_internal_messages_cannot_be_sent(msg: object) -> None:
    p = established()
    with pytest.raises(LocalProtocolError):
        p.client.send(msg)  # type: ignore[arg-type]


def test_hello_after_handshake_is_unexpected() -> None:
    p = established()
    p.client._queue(Hello(p.client.credential))
    fails_with(p.server, p.client.data_to_send(), Reason.UNEXPECTED_MESSAGE)
    peer_sees_close(p, p.server, p.client, Reason.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (pack([2, 2, 1]), Reason.UNSUPPORTED_VERSION),
        (pack([1, 99]), Reason.INVALID_MESSAGE),
        pytest.param(bytes.fromhex("930102cb3ff8000000000000"), Reason.INVALID_MESSAGE),
        pytest.param(bytes.fromhex("93010201c0"), Reason.INVALID_MESSAGE),
    ],
)
def test_bad_plaintext_when_established(plaintext: bytes, reason: Reason) -> None:
    p = established()
    body = p.client._transport.encrypt(plaintext)  # type: ignore[union-attr]
    err = fails_with(p.server, frame(body), reason)
    assert isinstance(err, DecodeError)
    peer_sees_close(p, p.server, p.client, reason)


def test_send_invalid_message_is_local_error() -> None:
    p = established()
    with pytest.raises(LocalProtocolError):
        p.client.send(Ping(2**40))


def test_application_message_passes_through() -> None:
    p = established()
    p.client.send(Pong(5))  # an unsolicited Pong is surfaced like any message
    assert p.transfer(p.client, p.server) == [Pong(5)]


def test_hostile_hello_payload_costs_little_memory() -> None:
    # Issue 17: a stranger's 960-byte Hello payload of array16 headers (each
    # claiming 16,384 items) cost ~21 MB per handshake before any limit.
    import tracemalloc

    from protocol import NoiseHandshake
    from protocol.framing import frame as make_frame

    com = Community()
    alice, bob = com.member("alice"), com.member("bob")
    server = session_for(bob, com, initiator=False)
    hs = NoiseHandshake(initiator=True, static_private=alice.noise_private, community=com.name)
    server.receive_data(make_frame(hs.write_message(b"")), NOW)
    assert server.next_event() is NEED_DATA
    hs.read_message(server.data_to_send()[2:])
    msg3 = make_frame(hs.write_message(b"\xdc\x40\x00" * 320))
    tracemalloc.start()
    try:
        fails_with(server, msg3, Reason.HANDSHAKE_FAILED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # was ~42 MB


def test_a_message_sent_twice_is_encoded_once() -> None:
    # A gossip item goes to several peers: its plaintext is packed once.
    p = established()
    msg = Ping(9)
    p.client.send(msg)
    packed = msg._packed
    assert packed == encode_message(Ping(9))
    p.client.send(msg)
    assert msg._packed is packed
    assert p.transfer(p.client, p.server) == [Ping(9), Ping(9)]
