"""Sans-IO congestion pieces: feedback wire form, stamps, token bucket, AIMD pacer."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import (
    AimdPacer,
    DecodeError,
    FeedbackEcho,
    FeedbackStamper,
    StampError,
    TokenBucket,
    compute_stamp,
    decode_message,
    encode_message,
)

NOW = 1_800_000_000.0
SECRET = bytes(range(32))


def test_feedback_round_trips_and_is_checked_on_decode() -> None:
    fb = FeedbackStamper(SECRET).issue("alice", "gossip", 12.5, NOW, 10.0)
    assert fb.TYPE == 16 and fb.CATEGORY == "control"
    assert (fb.rate_milli, fb.duration_ms, fb.expires_ms) == (12500, 10000, int(NOW * 1000) + 10000)
    assert decode_message(encode_message(fb)) == fb
    echo = FeedbackEcho.of(fb)
    assert decode_message(encode_message(echo)) == echo
    bad = encode_message(dataclasses.replace(fb, category="gossip")).replace(b"gossip", b"gossiq")
    with pytest.raises(DecodeError):
        decode_message(bad)


def test_stamp_binds_every_field_and_the_member() -> None:
    base = compute_stamp(SECRET, "alice", "gossip", 1000, 10000, 5, 1)
    assert len(base) == 32
    variants = [
        ("bob", "gossip", 1000, 10000, 5, 1), ("alice", "trade", 1000, 10000, 5, 1),
        ("alice", "gossip", 1001, 10000, 5, 1), ("alice", "gossip", 1000, 10001, 5, 1),
        ("alice", "gossip", 1000, 10000, 6, 1), ("alice", "gossip", 1000, 10000, 5, 2),
    ]
    assert all(compute_stamp(SECRET, *v) != base for v in variants)  # type: ignore[arg-type]
    assert compute_stamp(bytes(32), "alice", "gossip", 1000, 10000, 5, 1) != base


def test_genuine_echo_is_accepted_once() -> None:
    stamper = FeedbackStamper(SECRET)
    fb = stamper.issue("alice", "gossip", 10, NOW, 10.0)
    stamper.check_echo("alice", FeedbackEcho.of(fb), NOW + 1)
    with pytest.raises(StampError) as info:
        stamper.check_echo("alice", FeedbackEcho.of(fb), NOW + 2)
    assert info.value.kind == "replayed"


@pytest.mark.parametrize("change", [
    {"rate_milli": 999_999},  # claim a higher allowance
    {"expires_ms": int(NOW * 1000) + 3_600_000},  # claim it for longer
    {"stamp": bytes(32)},
    {"serial": 99},
])
def test_forged_echo_is_rejected(change: dict[str, object]) -> None:
    stamper = FeedbackStamper(SECRET)
    fb = stamper.issue("alice", "gossip", 10, NOW, 10.0)
    with pytest.raises(StampError) as info:
        stamper.check_echo("alice", dataclasses.replace(FeedbackEcho.of(fb), **change), NOW + 1)  # type: ignore[arg-type]
    assert info.value.kind == "forged"


def test_echo_by_another_member_or_from_another_node_is_forged() -> None:
    stamper = FeedbackStamper(SECRET)
    fb = stamper.issue("alice", "gossip", 10, NOW, 10.0)
    with pytest.raises(StampError, match="does not verify"):
        stamper.check_echo("mallory", FeedbackEcho.of(fb), NOW)
    other = FeedbackStamper(bytes(32)).issue("alice", "gossip", 10, NOW, 10.0)
    with pytest.raises(StampError, match="does not verify"):
        stamper.check_echo("alice", FeedbackEcho.of(other), NOW)


def test_older_stamp_replayed_for_a_higher_rate_is_rejected() -> None:
    stamper = FeedbackStamper(SECRET)
    generous = stamper.issue("alice", "gossip", 50, NOW, 60.0)
    strict = stamper.issue("alice", "gossip", 5, NOW + 1, 60.0)
    with pytest.raises(StampError) as info:
        stamper.check_echo("alice", FeedbackEcho.of(generous), NOW + 2)
    assert info.value.kind == "replayed"
    stamper.check_echo("alice", FeedbackEcho.of(strict), NOW + 2)


def test_expired_stamp_is_rejected() -> None:
    stamper = FeedbackStamper(SECRET)
    fb = stamper.issue("alice", "trade", 10, NOW, 2.0)
    with pytest.raises(StampError) as info:
        stamper.check_echo("alice", FeedbackEcho.of(fb), NOW + 2.0)
    assert info.value.kind == "expired"


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket.full(rate=10, burst=5, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 5
    assert bucket.delay(0.0) == pytest.approx(0.1)
    assert sum(bucket.take(1.0) for _ in range(20)) == 5  # refilled to burst, not 10
    taken = sum(bucket.take(1.0 + i * 0.01) for i in range(1, 101))  # 1 s at 100 msg/s
    assert 9 <= taken <= 11


def _send_for(pacer: AimdPacer, start: float, seconds: float, step: float = 0.001) -> int:
    """Send as fast as the pacer allows; returns how many went out."""
    sent, t = 0, start
    for _ in range(int(seconds / step)):
        if pacer.delay(t) <= 0:
            pacer.sent(t)
            sent += 1
        t += step
    return sent


def test_pacer_backs_off_on_feedback_and_creeps_back() -> None:
    pacer = AimdPacer(ceiling=40, now=0.0, increase=4)
    assert _send_for(pacer, 0.0, 5.0) == pytest.approx(40 * 5 + 20, abs=3)  # rate plus burst
    pacer.on_feedback(rate=10, duration=5.0, now=5.0)
    assert pacer.rate == 10
    during = _send_for(pacer, 5.0, 4.9)
    assert during <= 10 * 4.9 + 5 + 1  # never above the allowed rate (plus its small burst)
    _send_for(pacer, 9.9, 10.0)  # feedback expired: additive increase back to the ceiling
    assert pacer.rate == pytest.approx(40)


def test_pacer_multiplicative_decrease_below_the_allowed_rate() -> None:
    pacer = AimdPacer(ceiling=40, now=0.0, increase=4)
    pacer.on_feedback(rate=30, duration=5.0, now=0.0)
    assert pacer.rate == 20  # halved, which is below the 30 allowed
    pacer.delay(2.0)
    assert pacer.rate == pytest.approx(28)
    pacer.delay(4.0)
    assert pacer.rate == pytest.approx(30)  # capped while the feedback holds
