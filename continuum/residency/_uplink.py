"""Uplink: what leaves an edge node for a store, field by field (``uplink_plan``).

A sample whose class the store may not hold stays on the edge; a field whose class it may
not hold is dropped, hashed (``hash_field``) or keeps its whole sample at the edge, as its
class's ``field_action`` says.  Each field's decision names the field as an attribute.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from continuum.errors import ConfigError, PlacementError
from continuum.labels import SITE
from continuum.residency._decision import Decision
from continuum.residency._placement import store_decision
from continuum.residency._policy import FieldAction, ResidencyPolicy
from continuum.spec import DataClass, PipelineSpec

_HASH_PREFIX: Final = "hmac-sha256:"
_MIN_SALT_BYTES: Final = 16


def hash_field(name: str, value: object, *, salt: bytes) -> str:
    """Return the pseudonym of a field value: HMAC-SHA256 keyed with the tenant's salt.

    The same value hashes the same within a tenant (joins still work) and differently across
    tenants; without the salt the value cannot be guessed by hashing candidates.

    Raises:
        ConfigError: the salt is shorter than 16 bytes.
    """
    if len(salt) < _MIN_SALT_BYTES:
        raise ConfigError(
            f"the field hashing salt has {len(salt)} bytes; use at least {_MIN_SALT_BYTES} "
            "random bytes per tenant (e.g. secrets.token_bytes(32))"
        )
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
    elif hasattr(value, "tobytes"):
        data = value.tobytes()
    else:
        data = repr(value).encode("utf-8")
    digest = hmac.new(salt, name.encode("utf-8") + b"\0" + data, hashlib.sha256).hexdigest()
    return _HASH_PREFIX + digest


@dataclass(frozen=True, slots=True)
class UplinkPlan:
    """What uplink does with a pipeline's samples from one edge node to one store.

    ``keep_at_edge``: no sample goes up.  Otherwise ``dropped`` fields are removed and
    ``hashed`` fields pseudonymised (``apply``) before the sample leaves the node.
    """

    keep_at_edge: bool
    dropped: tuple[str, ...] = ()
    hashed: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    def field_decision(self, name: str) -> Decision | None:
        """Return the decision on the field ``name`` (its rule, and whether it is dropped
        or hashed), or None for a field the plan did not decide (not in the schema)."""
        return next((d for d in self.decisions if d.field == name), None)

    @property
    def sends(self) -> bool:
        """Return whether samples may go up the link."""
        return not self.keep_at_edge

    def apply(self, fields: Mapping[str, object], *, salt: bytes) -> dict[str, object]:
        """Return ``fields`` with the dropped fields removed and the hashed ones pseudonymised.

        Raises:
            PlacementError: the plan keeps samples at the edge; nothing may be sent.
        """
        if self.keep_at_edge:
            refusal = next((d for d in self.decisions if not d.allowed), None)
            raise PlacementError(
                "samples of this pipeline stay on the edge"
                + (f": {refusal.reason}" if refusal else ""),
                rule=refusal.rule if refusal else "uplink",
                label=refusal.label if refusal else None,
            )
        out: dict[str, object] = {}
        for name, value in fields.items():
            if name in self.dropped:
                continue
            out[name] = hash_field(name, value, salt=salt) if name in self.hashed else value
        return out

    def describe(self) -> str:
        """Return the plan in one line, for people."""
        if self.keep_at_edge:
            return "samples stay on the edge"
        parts = []
        if self.dropped:
            parts.append(f"drop {', '.join(self.dropped)}")
        if self.hashed:
            parts.append(f"hash {', '.join(self.hashed)}")
        return "send samples" + (f" ({'; '.join(parts)})" if parts else " unchanged")


def uplink_plan(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    edge_labels: Mapping[str, str],
    cloud_store_labels: Mapping[str, str],
) -> UplinkPlan:
    """Return what to do with samples going from the node ``edge_labels`` to the store.

    The sample's own class must be storable there, else every sample stays on the edge.
    A field whose class the store may not hold gets its class's ``field_action``: dropped,
    hashed, or the whole sample stays on the edge.
    """
    site = edge_labels.get(SITE)
    tenant = spec.tenant
    sample = store_decision(
        policy,
        {spec.data_class: "the samples"},
        cloud_store_labels,
        tenant=tenant,
        source_site=site,
        stage="uplink",
    )
    decisions = [sample]
    if not sample.allowed:
        return UplinkPlan(keep_at_edge=True, decisions=tuple(decisions))
    dropped: list[str] = []
    hashed: list[str] = []
    keep = False
    for name, data_class in spec.edge.input.fields.items():
        decision, action = _field_decision(
            policy, name, data_class, cloud_store_labels, tenant=tenant, source_site=site
        )
        decisions.append(decision)
        if action == "drop":
            dropped.append(name)
        elif action == "hash":
            hashed.append(name)
        elif action == "keep_at_edge":
            keep = True
    return UplinkPlan(
        keep_at_edge=keep, dropped=tuple(dropped), hashed=tuple(hashed), decisions=tuple(decisions)
    )


_DONE_TO_FIELD: Final[dict[FieldAction, str]] = {
    "drop": "dropped",
    "hash": "hashed",
    "keep_at_edge": "kept on the edge, with its whole sample",
}


def _field_decision(
    policy: ResidencyPolicy,
    name: str,
    data_class: DataClass,
    store_labels: Mapping[str, str],
    *,
    tenant: str,
    source_site: str | None,
) -> tuple[Decision, FieldAction | None]:
    """Decide the field ``name``: sent as it is (action None), or its class's field_action."""
    verdict = store_decision(
        policy,
        {data_class: f"field {name}"},
        store_labels,
        tenant=tenant,
        source_site=source_site,
        stage="uplink",
    )
    if verdict.allowed:
        return replace(verdict, field=name), None
    action = policy.field_action(data_class, tenant)
    path, _ = policy.class_policy(data_class, tenant)
    decision = Decision(
        allowed=True,
        rule=f"{verdict.rule}, {path}.field_action",
        reason=f"{verdict.reason}: field {name} is {_DONE_TO_FIELD[action]} "
        f"(field_action {action})",
        stage="uplink",
        label=verdict.label,
        field=name,
    )
    return decision, action
