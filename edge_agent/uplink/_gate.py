"""The residency gate in front of the outbox: each pipeline's uplink plan applied to selected
samples before the outbox writes them, so data that may not leave the node never touches
its disk."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Final

from continuum.errors import ProtocolError
from continuum.residency import UplinkPlan
from continuum.wire.codec import MAX_FIELDS, field_value_bytes
from continuum.wire.codec import FieldValue as WireValue
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import SampleEntry

log = logging.getLogger(__name__)

#: Distinct undeclared field names counted by name per pipeline; past this a source sending
#: ever new names (a serial number as a name) would grow the metric without bound, so the
#: rest are counted together under ``OTHER_UNDECLARED`` (not a valid field name).
MAX_UNDECLARED_NAMES: Final = 32
OTHER_UNDECLARED: Final = "(other)"


class ResidencyGate:
    """Apply each pipeline's uplink plan to selected samples before the outbox writes them.

    Residency fails closed: a field the pipeline's input schema does not declare has no
    class the plan could judge (a source's typo, ``patientid`` for ``patient_id``, would
    otherwise ship the raw value), so it is dropped here, never written to the outbox, counted
    by name and logged once.  A pipeline whose plan keeps samples at the edge queues none;
    otherwise the plan's dropped fields are removed and its hashed fields pseudonymised with
    the tenant's salt.  Numbers are stringified (the wire carries text and bytes); a field
    the wire cannot carry (over ``MAX_FIELD_BYTES``, or past ``MAX_FIELDS``) is dropped and
    counted.

    Args:
        plans: pipeline -> its plan, or None where no policy applies (declared fields pass).
        declared: pipeline -> the field names its input schema declares (a pipeline not
            listed declares none: all its fields are dropped).
        salt: the tenant's field-hashing salt (needed when a plan hashes).
        metrics: the agent's metrics (kept-at-edge samples, dropped and hashed fields).
    """

    def __init__(
        self,
        plans: Mapping[str, UplinkPlan | None],
        *,
        declared: Mapping[str, Collection[str]],
        salt: bytes | None,
        metrics: AgentMetrics,
    ) -> None:
        self._plans = dict(plans)
        self._declared = {pipeline: frozenset(names) for pipeline, names in declared.items()}
        self._salt = salt or b""
        self._metrics = metrics
        self._warned: set[tuple[str, str]] = set()
        self._undeclared: dict[str, set[str]] = {}
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
        fields: Mapping[str, object] = self._declared_only(pipeline, entry.fields)
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

    def _declared_only(self, pipeline: str, fields: Mapping[str, object]) -> Mapping[str, object]:
        """Return ``fields`` without those ``pipeline`` does not declare; count and log those."""
        declared = self._declared.get(pipeline, frozenset())
        extra = [name for name in fields if name not in declared]
        if not extra:
            return fields
        for name in extra:
            label = self._undeclared_label(pipeline, name)
            self._metrics.fields_undeclared_dropped.labels(pipeline, label).inc()
            what = (
                f"field {name!r}"
                if label == name
                else f"field {name!r} and further undeclared names (counted as {label!r})"
            )
            self._warn_once(
                pipeline,
                label,
                f"{what} dropped before the outbox: the pipeline's input schema does not "
                f"declare it (declared: {', '.join(sorted(declared)) or 'none'}); fix the "
                "source's field name or declare the field with its data class in "
                "edge.input.fields",
            )
        return {name: value for name, value in fields.items() if name in declared}

    def _undeclared_label(self, pipeline: str, name: str) -> str:
        """Return the metric's field label for ``name``: itself, or ``OTHER_UNDECLARED`` once
        the pipeline has ``MAX_UNDECLARED_NAMES`` names counted."""
        with self._warn_lock:
            names = self._undeclared.setdefault(pipeline, set())
            if name in names:
                return name
            if len(names) < MAX_UNDECLARED_NAMES:
                names.add(name)
                return name
        return OTHER_UNDECLARED

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
