"""The residency gate in front of the outbox: each pipeline's uplink plan applied to selected
samples before the outbox writes them, so data that may not leave the node never touches
its disk."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence

from continuum.errors import ProtocolError
from continuum.residency import UplinkPlan
from continuum.wire.codec import MAX_FIELDS, field_value_bytes
from continuum.wire.codec import FieldValue as WireValue
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import SampleEntry

log = logging.getLogger(__name__)


class ResidencyGate:
    """Apply each pipeline's uplink plan to selected samples before the outbox writes them.

    A pipeline whose plan keeps samples at the edge queues none; otherwise the plan's
    dropped fields are removed and its hashed fields pseudonymised with the tenant's salt.
    Fields the pipeline does not declare are of the pipeline's own class and pass as they
    are.  Numbers are stringified (the wire carries text and bytes); a field the wire cannot
    carry (over ``MAX_FIELD_BYTES``, or past ``MAX_FIELDS``) is dropped and counted.

    Args:
        plans: pipeline -> its plan, or None where no policy applies (fields pass).
        salt: the tenant's field-hashing salt (needed when a plan hashes).
        metrics: the agent's metrics (kept-at-edge samples, dropped and hashed fields).
    """

    def __init__(
        self,
        plans: Mapping[str, UplinkPlan | None],
        *,
        salt: bytes | None,
        metrics: AgentMetrics,
    ) -> None:
        self._plans = dict(plans)
        self._salt = salt or b""
        self._metrics = metrics
        self._warned: set[tuple[str, str]] = set()
        self._warn_lock = threading.Lock()

    def admit(self, entries: Sequence[SampleEntry]) -> list[SampleEntry]:
        """Return ``entries`` as they may be queued: plan applied, kept-at-edge ones left out."""
        out: list[SampleEntry] = []
        kept: dict[str, int] = {}
        for entry in entries:
            plan = self._plans.get(entry.pipeline)
            if plan is not None and plan.keep_at_edge:
                kept[entry.pipeline] = kept.get(entry.pipeline, 0) + 1
                continue
            if not entry.fields:
                out.append(entry)
                continue
            out.append(dataclasses.replace(entry, fields=self._fields(entry, plan)))
        for pipeline, count in kept.items():
            self._metrics.kept_at_edge.labels(pipeline).inc(count)
        return out

    def _fields(self, entry: SampleEntry, plan: UplinkPlan | None) -> dict[str, WireValue]:
        pipeline = entry.pipeline
        fields: Mapping[str, object] = entry.fields
        if plan is not None and (plan.dropped or plan.hashed):
            dropped = sum(1 for name in plan.dropped if name in fields)
            hashed = sum(1 for name in plan.hashed if name in fields)
            fields = plan.apply(fields, salt=self._salt)
            if dropped:
                self._metrics.fields_dropped.labels(pipeline, "residency").inc(dropped)
            if hashed:
                self._metrics.fields_hashed.labels(pipeline).inc(hashed)
        out: dict[str, WireValue] = {}
        for name, value in fields.items():
            wire = value if isinstance(value, str | bytes) else str(value)
            problem = _unsendable_field(name, wire, len(out))
            if problem is not None:
                # One such field would make every batch it travels in unsendable.
                reason, why = problem
                self._metrics.fields_dropped.labels(pipeline, reason).inc()
                self._warn_once(pipeline, name, f"field {name!r} dropped: {why}")
                continue
            out[name] = wire
        return out

    def _warn_once(self, pipeline: str, name: str, message: str) -> None:
        with self._warn_lock:
            if (pipeline, name) in self._warned:
                return
            self._warned.add((pipeline, name))
        log.warning("pipeline %s: %s (further ones are only counted)", pipeline, message)


def _unsendable_field(name: str, value: WireValue, index: int) -> tuple[str, str] | None:
    """Return (reason, why) the wire cannot carry ``value`` as field number ``index``."""
    if index >= MAX_FIELDS:
        return "too_many", f"a sample carries at most MAX_FIELDS ({MAX_FIELDS}) fields"
    try:
        field_value_bytes(name, value)
    except ProtocolError as exc:
        # The value is str or bytes here, so a bad value is text that is not valid UTF-8.
        return ("too_large" if exc.reason == "too_large" else "bad_text"), str(exc)
    return None
