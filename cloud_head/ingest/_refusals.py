"""Ingest's refusals: which are final and which temporary, and the log of the temporary ones.

Why each reason is what it is, and what becomes of the samples, is told in
``cloud_head.ingest``'s package docstring; this module is the one place that decides it.
The audit records of final refusals, with the ids of the samples they ended, are
``cloud_head.ingest._audit``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

__all__ = ["FINAL_REASONS", "POLICY_REASONS", "TEMPORARY_REASONS", "HeldLog", "is_final"]

#: Refusals a resend cannot turn into a store: the batch is malformed (the codec's and the
#: topic scheme's reasons), not this tenant's or this topic's, off the pipeline's schema or
#: class, or forbidden by the residency policy.  A batch refused so that decoded on its own
#: node's topic gets a receipt naming its seqs as refused, so the node ends them; the rest
#: cannot be named (nothing trustworthy says whose samples they are) and get none.
FINAL_REASONS: Final = frozenset(
    {
        # The topic: not one of ingest's, or not this tenant's.
        "bad_topic",
        "bad_name",
        "wrong_tenant",
        "unexpected_topic",
        # The payload does not decode (continuum.wire.codec).
        "bad_magic",
        "bad_kind",
        "bad_flags",
        "bad_dtype",
        "bad_shape",
        "bad_value",
        "bad_data_class",
        "corrupt",
        "truncated",
        "trailing_bytes",
        "too_large",
        # It decodes, but says something it may never say.
        "node_mismatch",
        "pipeline_mismatch",
        "schema_mismatch",
        "data_class_mismatch",
        "empty_batch",
        "bad_seq",
        # The residency policy forbids it here.
        "policy",
        "policy_field",
    }
)
#: Refusals that may pass later: ingest acknowledges the message (so the broker does not
#: redeliver it in a hot loop) but sends no receipt, so the node keeps the samples and
#: sends them again after its ``resend_unconfirmed_s``, within its outbox bounds.
TEMPORARY_REASONS: Final = frozenset(
    {
        "unknown_node",  # the fleet registry does not know the node (yet, or any more)
        "fleet_unavailable",  # the fleet registry could not be read
        "unknown_pipeline",  # not deployed (yet: a cloud head that is starting)
        "quota",  # samples_per_day is spent: tomorrow they fit
        "unstorable",  # the store cannot take the batch (a store or ingest fix can)
        "internal_error",  # a bug in ingest's checks (a fixed release can)
        "unsupported_version",  # a payload of a newer codec (an upgraded ingest reads it)
    }
)
#: Final refusals that are residency decisions: audited as ``POLICY_REFUSAL``, the others
#: as ``INGEST_REFUSAL``.
POLICY_REASONS: Final = frozenset({"policy", "policy_field"})
#: Topics of held batches remembered for the recovery line; past this they are only counted.
_MAX_HELD_TOPICS: Final = 10_000


def is_final(reason: str) -> bool:
    """Return whether a refusal for ``reason`` can never pass on a resend.

    A reason in neither set is temporary: a new reason must not end samples at the edge
    before someone decided that it may.
    """
    return reason in FINAL_REASONS


class HeldLog:
    """Log batches refused for now once per reason, and once when that reason is over.

    A reason is over when every topic (a node's pipeline) held for it had a batch stored
    since: the node came back into the fleet, the day's quota reset, the pipeline was
    deployed.  Meanwhile further held batches are only counted.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._lock = threading.Lock()
        # reason -> (first held at, messages held, topics held and not stored since)
        self._open: dict[str, tuple[float, int, set[str]]] = {}

    def held(self, reason: str, topic: str, detail: str) -> None:
        """Note one message held for ``reason``; log the first of an episode."""
        with self._lock:
            started, count, topics = self._open.get(reason, (0.0, 0, set()))
            if len(topics) < _MAX_HELD_TOPICS:
                topics.add(topic)
            self._open[reason] = (started or time.monotonic(), count + 1, topics)
        if not started:
            self._log.warning(
                "holding back a batch on %s: %s: %s; it gets no receipt, so the node keeps "
                "its samples and sends them again (further ones for %s are only counted "
                "until its batches are stored)",
                topic,
                reason,
                detail,
                reason,
            )

    def stored(self, topic: str) -> None:
        """Note a batch stored on ``topic``; log the end of every episode it closes."""
        if not self._open:  # the common case, without the lock
            return
        with self._lock:
            closed = []
            for reason, (started, count, topics) in list(self._open.items()):
                topics.discard(topic)
                if not topics:
                    closed.append((reason, started, count))
                    del self._open[reason]
        for reason, started, count in closed:
            self._log.warning(
                "batches held back for %s are stored again after %.1f s (%d message(s) held)",
                reason,
                time.monotonic() - started,
                count,
            )
