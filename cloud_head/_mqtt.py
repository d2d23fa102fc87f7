"""What the cloud head's MQTT runners share: reject logging, the connection state, reason codes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from continuum._retry import FailureLog


class RejectLog:
    """Log the first reject of each reason at WARNING and the rest at DEBUG."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def reject(self, reason: str, topic: str, detail: str) -> None:
        """Log one rejected message."""
        with self._lock:
            first = reason not in self._seen
            self._seen.add(reason)
        level = logging.WARNING if first else logging.DEBUG
        suffix = " (further rejects for this reason are logged at DEBUG)" if first else ""
        self._logger.log(level, "rejected message on %s: %s: %s%s", topic, reason, detail, suffix)


def reason_code_failed(reason_code: Any) -> bool:
    """Return whether a paho v2 reason code reports a failure."""
    return bool(getattr(reason_code, "is_failure", False))


class BrokerConnection:
    """One cloud service's MQTT session as operators see it: up or down, since when, drops.

    The runner calls ``up()`` once its session is subscribed and ``down()`` from paho's
    disconnect callback (``expected=True`` when it is stopping).  The loss is logged once when
    it starts and the recovery once when it ends (``FailureLog``), however many reconnects
    paho tries between them.  ``stats()`` is what the service's ``stats()``, its metrics and
    the demo's live view show: ``connected``, ``disconnected_since`` (cloud time; until the
    first connect, the time the tracker was made) and ``disconnects`` (unexpected losses).
    """

    def __init__(
        self, logger: logging.Logger, name: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failure = FailureLog(f"{name}'s broker connection", logger)
        self._down_since: float | None = clock()
        self._disconnects = 0

    @property
    def connected(self) -> bool:
        """Whether the session is up and subscribed."""
        with self._lock:
            return self._down_since is None

    def up(self) -> None:
        """Record that the session is up and subscribed; log the recovery of a lost one."""
        with self._lock:
            self._down_since = None
            self._failure.recovered()

    def down(self, reason: object, *, expected: bool = False) -> None:
        """Record that the session is down; an unexpected loss is counted and logged once."""
        with self._lock:
            if self._down_since is not None:
                return  # already down: paho retrying is not news
            self._down_since = self._clock()
            if not expected:
                self._disconnects += 1
                self._failure.failed(f"lost the broker ({reason}); reconnecting")

    def stats(self) -> dict[str, Any]:
        """Return ``connected``, ``disconnected_since`` and ``disconnects``."""
        with self._lock:
            return {
                "connected": self._down_since is None,
                "disconnected_since": self._down_since,
                "disconnects": self._disconnects,
            }
