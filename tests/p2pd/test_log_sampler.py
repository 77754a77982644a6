"""p2pd.log.Sampler: per cause, the first line, then one summary per interval."""

from __future__ import annotations

import logging

import pytest

from p2pd import log


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == "p2pd"]
    caplog.clear()
    return out


def test_first_occurrence_then_a_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pd")
    s = log.Sampler(interval=10.0)
    assert s.info(0.0, "handshake_failed", "TIMEOUT", addr="10.0.0.1:5")
    for t in range(1, 1000):
        assert not s.info(t / 100, "handshake_failed", "TIMEOUT", addr="10.0.0.2:5")
    assert lines(caplog) == ["event=handshake_failed addr=10.0.0.1:5"]
    # Another cause is not held back by the first.
    assert s.info(5.0, "handshake_failed", "HANDSHAKE_FAILED", addr="10.0.0.3:5")
    assert lines(caplog) == ["event=handshake_failed addr=10.0.0.3:5"]
    # After the interval the next occurrence is written with the count.
    assert s.info(10.0, "handshake_failed", "TIMEOUT", addr="10.0.0.4:5")
    assert lines(caplog) == ["event=handshake_failed addr=10.0.0.4:5 repeats=999"]
    assert s.status() == {"written": 3, "suppressed": 999}


def test_a_quiet_cause_gets_its_summary_from_any_later_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pd")
    s = log.Sampler(interval=10.0)
    s.warning(0.0, "stamp_rejected", "mallory:forged", peer="mallory")
    s.warning(1.0, "stamp_rejected", "mallory:forged", peer="mallory", serial=2)
    s.warning(2.0, "stamp_rejected", "mallory:forged", peer="mallory", serial=3)
    lines(caplog)
    s.info(30.0, "peer_gone", "alice", peer="alice")  # mallory stopped long ago
    assert lines(caplog) == ["event=peer_gone peer=alice",
                             "event=stamp_rejected peer=mallory serial=3 repeats=2"]


def test_causes_are_bounded_and_summarised_when_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pd")
    s = log.Sampler(interval=10.0, max_causes=2)
    s.info(0.0, "e", "a")
    s.info(0.1, "e", "a", n=1)
    s.info(0.2, "e", "b")
    s.info(0.3, "e", "c")  # forgets "a", summarising its repeat first
    assert lines(caplog) == ["event=e", "event=e", "event=e n=1 repeats=1", "event=e"]
    assert len(s._causes) == 2
