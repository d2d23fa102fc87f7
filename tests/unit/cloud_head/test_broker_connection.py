"""What a cloud service says about its own broker connection (issue 12: a dead broker must show)."""

from __future__ import annotations

import logging

import pytest

from cloud_head._mqtt import BrokerConnection

LOGGER = logging.getLogger("test.broker_connection")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestBrokerConnection:
    def test_down_until_the_first_connect_then_up(self) -> None:
        clock = Clock()
        link = BrokerConnection(LOGGER, "fleet x", clock=clock)
        assert link.stats() == {"connected": False, "disconnected_since": 100.0, "disconnects": 0}
        link.up()
        assert link.stats() == {"connected": True, "disconnected_since": None, "disconnects": 0}

    def test_a_loss_is_counted_and_logged_once_however_many_retries(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger=LOGGER.name)
        clock = Clock()
        link = BrokerConnection(LOGGER, "fleet x", clock=clock)
        link.up()
        clock.now = 150.0
        for _ in range(5):  # paho reports every failed reconnect
            link.down("connection refused")
            clock.now += 1
        assert link.stats() == {"connected": False, "disconnected_since": 150.0, "disconnects": 1}
        link.up()
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2
        assert "fleet x's broker connection failed" in messages[0]
        assert "connection refused" in messages[0]
        assert "recovered" in messages[1]

    def test_a_stop_is_not_a_loss(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger=LOGGER.name)
        link = BrokerConnection(LOGGER, "fleet x", clock=Clock())
        link.up()
        link.down("stopped", expected=True)
        assert not link.connected and link.stats()["disconnects"] == 0
        assert caplog.records == []
