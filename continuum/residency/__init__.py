"""The residency policy: where data of each class may be processed and stored, and its checks.

A ``ResidencyPolicy`` (YAML, validated) maps each data class, optionally per tenant, to
constraints on node labels.  The functions here turn it into decisions at every point where
data or work moves (DESIGN.md §6): deploy (``check_pipeline``, ``check_placement``), uplink
(``uplink_plan``), ingest (``ingest_allows``) and training (``derive_training_selector``;
``training_plan``: central, or federated where the data may not leave its sites).
Every ``Decision`` carries the rule (and, for a field of the sample, the field) as
attributes and the reason in words, for the audit log.  No Ray, no MQTT.

The rooms: ``_policy`` (the declared policy), ``_decision`` (a decision and a rule's
constraints), ``_placement`` (selectors, nodes and stores), ``_uplink`` (what leaves the edge,
field by field), ``_pipeline`` (a pipeline's decisions stage by stage) and
``_training_plan`` (central or federated retraining) and ``_explain`` (the whole pipeline,
for deploy's check and for people).
"""

from __future__ import annotations

from continuum.residency._decision import Decision, KnownNodes
from continuum.residency._explain import check_pipeline, explain
from continuum.residency._pipeline import derive_training_selector, pipeline_decisions
from continuum.residency._placement import (
    check_placement,
    ingest_allows,
    node_may_process,
    route,
)
from continuum.residency._policy import (
    ClassPolicy,
    FieldAction,
    PlacementRule,
    Purpose,
    ResidencyPolicy,
    TenantOverride,
    load_policy,
)
from continuum.residency._training_plan import CROSSES, TrainingPlan, training_plan
from continuum.residency._uplink import UplinkPlan, hash_field, uplink_plan

__all__ = [
    "CROSSES",
    "ClassPolicy",
    "Decision",
    "FieldAction",
    "KnownNodes",
    "PlacementRule",
    "Purpose",
    "ResidencyPolicy",
    "TenantOverride",
    "TrainingPlan",
    "UplinkPlan",
    "check_pipeline",
    "check_placement",
    "derive_training_selector",
    "explain",
    "hash_field",
    "ingest_allows",
    "load_policy",
    "node_may_process",
    "pipeline_decisions",
    "route",
    "training_plan",
    "uplink_plan",
]
