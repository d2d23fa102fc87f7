"""What the cloud head's MQTT runners share: their subscription filters and reject logging."""

from __future__ import annotations

import logging
import threading
from typing import Any

from continuum.wire import topics


def samples_filter(tenant: str) -> str:
    """Return the filter matching every samples topic of a tenant."""
    # Wildcard filters are built from topics.PREFIX so the scheme stays spelled in one place.
    return f"{topics.PREFIX}/{topics.check_name(tenant, 'tenant')}/pipelines/+/samples/+"


def feedback_filter(tenant: str) -> str:
    """Return the filter matching every feedback topic of a tenant."""
    return f"{topics.PREFIX}/{topics.check_name(tenant, 'tenant')}/pipelines/+/feedback/+"


def telemetry_filter(tenant: str) -> str:
    """Return the filter matching every telemetry topic of a tenant."""
    return f"{topics.PREFIX}/{topics.check_name(tenant, 'tenant')}/pipelines/+/telemetry/+"


def node_filter(tenant: str, kind: str) -> str:
    """Return the filter matching the ``kind`` (status, reported) topic of every node."""
    return f"{topics.PREFIX}/{topics.check_name(tenant, 'tenant')}/nodes/+/{kind}"


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
