"""Target: the session state machine, before and after the handshake.

The first input byte picks the situation:

* 0: a responder fed the rest as raw stream bytes (a stranger's first bytes);
* 1: an initiator that sent message 1, fed the rest as the responder's reply;
* 2: an established session fed the rest as transport *plaintexts*, each
  encrypted by the real peer (``len:u8 || bytes`` chunks), then its timers
  fired an hour later;
* 3: an established session fed the rest as raw bytes (forged frames).

Documented outcome (protocol/session.py): events, ``NEED_DATA``, or a
``ProtocolError``, after which the session is CLOSED and ``data_to_send``
still works.
"""

from __future__ import annotations

import p2pd_test_helpers as h  # type: ignore[import-not-found]
from p2pd_fuzz_engine import doc_examples  # type: ignore[import-not-found]

from protocol import NEED_DATA, ProtocolError, Session, frame

COM = h.Community()
ALICE, BOB = COM.member("alice"), COM.member("bob")


def _drain(sess: Session) -> None:
    for _ in range(10_000):
        if sess.next_event() is NEED_DATA:
            return
    raise AssertionError("session produced over 10,000 events from one input")


def _feed(sess: Session, data: bytes, now: float) -> bool:
    """Feed ``data``; False once the session refused it (it must then be CLOSED)."""
    try:
        sess.receive_data(data, now)
        _drain(sess)
    except ProtocolError:
        if sess.state.value != "closed":
            raise AssertionError(f"ProtocolError left the session in {sess.state}") from None
        sess.data_to_send()
        return False
    return True


def _established() -> tuple[Session, Session]:
    pair = h.SessionPair(h.session_for(ALICE, COM, initiator=True),
                         h.session_for(BOB, COM, initiator=False))
    pair.pump()
    assert pair.client.established and pair.server.established
    return pair.client, pair.server


def _chunks(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = data[pos]
        out.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return [c for c in out if c]


def target(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    now = h.NOW
    if mode == 0:
        sess = h.session_for(BOB, COM, initiator=False)
        if _feed(sess, rest, now):
            _timers(sess, now + 10)
    elif mode == 1:
        sess = h.session_for(ALICE, COM, initiator=True)
        sess.data_to_send()
        if _feed(sess, rest, now):
            _timers(sess, now + 10)
    elif mode == 2:
        peer, sess = _established()
        for plaintext in _chunks(rest):
            body = frame(peer._transport.encrypt(plaintext))  # type: ignore[union-attr]
            if not _feed(sess, body, now):
                return
        _timers(sess, now + 3600)
    else:
        _, sess = _established()
        _feed(sess, rest, now)


def _timers(sess: Session, now: float) -> None:
    try:
        sess.handle_timer(now)
    except ProtocolError:
        pass
    sess.data_to_send()


def seeds() -> list[bytes]:
    out = [b"\x00" + bytes(32) + b"\x00\x20" + bytes(32), b"\x00\x00\x20" + bytes(32),
           b"\x01\x00\x60" + bytes(96)]
    # A real handshake's message 1 and a real message 2, as the fuzzer's start points.
    init = h.session_for(ALICE, COM, initiator=True)
    msg1 = init.data_to_send()
    out.append(b"\x00" + msg1)
    resp = h.session_for(BOB, COM, initiator=False)
    resp.receive_data(msg1, h.NOW)
    _drain(resp)
    out.append(b"\x01" + resp.data_to_send())
    plaintexts = list(doc_examples().values())
    plaintexts += [b"\x93\x01\x02\x05", b"\x93\x01\x03\x05", b"\x92\x01\x05", b"\x94\x01\x04\x00\xa3bye",
                   b"\x92\x01" + b"\x91" * 990 + b"\x90"]
    for p in plaintexts:
        if len(p) < 256:
            out.append(b"\x02" + bytes([len(p)]) + p)
    out.append(b"\x02" + b"".join(bytes([len(p)]) + p for p in plaintexts if len(p) < 256))
    out.append(b"\x03\x00\x30" + bytes(48))
    return out


