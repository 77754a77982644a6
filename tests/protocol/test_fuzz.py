"""Property tests: arbitrary bytes only ever yield a value, NEED_DATA or a ProtocolError."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from p2pd_test_helpers import NOW, Community, SessionPair, session_for

from protocol import (
    NEED_DATA,
    Credential,
    Event,
    FrameDecoder,
    ProtocolError,
    Session,
    decode_message,
    frame,
    unpack,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COM = Community()
ALICE, BOB = COM.member("alice"), COM.member("bob")

# Byte strings that look a bit like our wire format, plus plain noise.
msgpackish = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"\x93\x01\x02", b"\x92\x01", b"\x9a", b"\x94\x01\x04", b"\x91"]),
              st.binary(max_size=200)),
)


def only_protocol_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except ProtocolError:
        pass


@FAST
@given(msgpackish)
def test_canonical_unpack(data: bytes) -> None:
    only_protocol_errors(lambda: unpack(data))


@FAST
@given(msgpackish)
def test_decode_message(data: bytes) -> None:
    only_protocol_errors(lambda: decode_message(data))


@FAST
@given(msgpackish)
def test_credential_decode(data: bytes) -> None:
    only_protocol_errors(lambda: Credential.decode(data))


@FAST
@given(st.binary(max_size=64), st.integers(1, 11))
def test_credential_field_mutation(junk: bytes, index: int) -> None:
    wire = BOB.credential.encode()
    pos = min(index * 20, len(wire) - 1)
    data = wire[:pos] + junk + wire[pos + len(junk):]
    only_protocol_errors(lambda: Credential.decode(data))


@FAST
@given(st.lists(st.binary(max_size=80), max_size=10), st.sampled_from([32, 1024, 65535]))
def test_frame_decoder(chunks: list[bytes], limit: int) -> None:
    dec = FrameDecoder(limit)

    def run() -> None:
        for chunk in chunks:
            dec.feed(chunk)
            while (body := dec.next_frame()) is not None:
                assert 0 < len(body) <= limit
        assert dec.buffered < 2 + limit

    only_protocol_errors(run)


def feed(sess: Session, chunks: list[bytes]) -> None:
    def run() -> None:
        for chunk in chunks:
            sess.receive_data(chunk, NOW)
            for _ in range(1000):
                ev = sess.next_event()
                if ev is NEED_DATA:
                    break
                assert isinstance(ev, Event)
        sess.data_to_send()

    only_protocol_errors(run)


def x25519_accepts(public: bytes) -> bool:
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


frames = st.lists(st.one_of(st.binary(min_size=1, max_size=300).map(frame), st.binary(max_size=40)),
                  max_size=4)


@FAST
@given(frames)
def test_responder_awaiting_msg1(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    # Known bug (test_session.py::test_low_order_ephemeral_in_msg1): a low-order
    # X25519 point as msg1 raises ValueError. Skip exactly those inputs here.
    assume(not (len(data) >= 34 and data[:2] == b"\x00\x20" and not x25519_accepts(data[2:34])))
    feed(session_for(BOB, COM, initiator=False), chunks)


@FAST
@given(frames)
def test_initiator_awaiting_msg2(chunks: list[bytes]) -> None:
    sess = session_for(ALICE, COM, initiator=True)
    sess.data_to_send()
    feed(sess, chunks)


@FAST
@given(frames)
def test_responder_awaiting_msg3(chunks: list[bytes]) -> None:
    client = session_for(ALICE, COM, initiator=True)
    server = session_for(BOB, COM, initiator=False)
    server.receive_data(client.data_to_send(), NOW)
    assert server.next_event() is NEED_DATA
    server.data_to_send()
    feed(server, chunks)


@FAST
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=300).map(frame), st.binary(max_size=40),
                          st.binary(min_size=1, max_size=100)), max_size=4),
       st.booleans())
def test_established(chunks: list[bytes], side: bool) -> None:
    pair = SessionPair(session_for(ALICE, COM, initiator=True),
                       session_for(BOB, COM, initiator=False))
    pair.pump()
    feed(pair.client if side else pair.server, chunks)


@FAST
@given(st.lists(msgpackish, max_size=4))
def test_established_with_valid_encryption(plaintexts: list[bytes]) -> None:
    """Authentic frames with arbitrary plaintexts: exercises decoding behind the AEAD."""
    pair = SessionPair(session_for(ALICE, COM, initiator=True),
                       session_for(BOB, COM, initiator=False))
    pair.pump()
    transport = pair.client._transport
    assert transport is not None
    feed(pair.server, [frame(transport.encrypt(p)) for p in plaintexts if p])
