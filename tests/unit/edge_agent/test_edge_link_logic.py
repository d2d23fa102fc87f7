"""The MQTT link's protocol logic, apart from any socket: backoff, in-flight window, failure log."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from continuum._retry import Backoff, FailureLog
from edge_agent.link import InflightWindow, PublishOutcome


class TestBackoff:
    def test_delays_double_up_to_the_cap_with_jitter_in_the_upper_half(self) -> None:
        backoff = Backoff(0.5, 8.0, random.Random(7))
        delays = [backoff.next_delay() for _ in range(8)]
        bases = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
        for delay, base in zip(delays, bases, strict=True):
            assert base / 2 <= delay <= base
        assert len(set(delays)) == len(delays)  # jittered, not lockstep

    def test_a_reset_starts_again_from_the_minimum(self) -> None:
        backoff = Backoff(1.0, 60.0, random.Random(1))
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        assert backoff.attempt == 0
        assert backoff.next_delay() <= 1.0

    def test_bounds_must_be_ordered(self) -> None:
        with pytest.raises(ValueError):
            Backoff(5.0, 1.0)


class TestInflightWindow:
    def test_capacity_bounds_what_may_be_started(self) -> None:
        window = InflightWindow(2)
        window.register(1, None, 10)
        window.register(2, None, 10)
        assert window.free() == 0
        window.complete(1, True, "success")
        assert window.free() == 1

    def test_a_puback_before_registration_is_matched_later(self) -> None:
        window = InflightWindow(4)
        seen: list[PublishOutcome] = []
        assert window.complete(9, True, "success") is None  # arrived first
        early = window.register(9, seen.append, 123)
        assert early == PublishOutcome(True, "success", 123)
        assert len(window) == 0

    def test_completion_returns_the_callback_and_the_outcome(self) -> None:
        window = InflightWindow(4)
        seen: list[PublishOutcome] = []
        window.register(3, seen.append, 50)
        resolved = window.complete(3, False, "no_subscribers")
        assert resolved is not None
        callback, outcome = resolved
        assert callback is not None
        callback(outcome)
        assert seen == [PublishOutcome(False, "no_subscribers", 50)]

    def test_wait_empty_returns_when_the_last_ack_arrives(self) -> None:
        window = InflightWindow(4)
        window.register(1, None, 1)
        threading.Timer(0.1, window.complete, args=(1, True, "success")).start()
        assert window.wait_empty(5.0)
        window.register(2, None, 1)
        assert not window.wait_empty(0.05)


class TestFailureLog:
    def test_logs_once_when_failing_starts_and_once_when_it_recovers(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        health = FailureLog("link", logging.getLogger("test.failurelog"))
        with caplog.at_level(logging.INFO, logger="test.failurelog"):
            for _ in range(5):
                health.failed("connection refused")
            assert health.failing
            health.recovered()
            health.recovered()
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2
        assert "failed: connection refused" in messages[0]
        assert "recovered" in messages[1] and "5 failed attempt" in messages[1]
        assert not health.failing
