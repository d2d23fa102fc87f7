"""What the cloud head's MQTT runners share: reject logging and reason codes."""

from __future__ import annotations

import logging
import threading
from typing import Any


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
