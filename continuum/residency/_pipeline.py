"""A pipeline's decisions, stage by stage, and the training selector (``_explain`` turns them
into deploy's check and the explanation).

Built from the placement and uplink decisions: the edge stage where it runs, each edge
node's uplink plan, the store, the training job (``derive_training_selector`` narrows
``retrain.where`` to the policy) and rollout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from continuum.labels import SITE, LabelSelector
from continuum.residency._decision import (
    Decision,
    KnownNodes,
    RefusedError,
    constraints,
    finite_values,
    node_list,
)
from continuum.residency._placement import evaluate, store_decision
from continuum.residency._policy import ResidencyPolicy
from continuum.residency._uplink import uplink_plan
from continuum.spec import DataClass, PipelineSpec


def _edge_classes(spec: PipelineSpec) -> dict[DataClass, str | None]:
    classes: dict[DataClass, str | None] = {spec.data_class: None}
    for name, data_class in spec.edge.input.fields.items():
        if data_class not in classes:
            classes[data_class] = f"field {name}"
    return classes


def _training_classes(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    store_labels: Mapping[str, str] | None,
    source_site: str | None,
) -> dict[DataClass, str | None]:
    """Return the classes the store may hold for this pipeline, which training then reads."""
    classes: dict[DataClass, str | None] = {spec.data_class: None}
    for name, data_class in spec.edge.input.fields.items():
        if data_class in classes:
            continue
        if store_labels is None:
            classes[data_class] = f"field {name}; the store is not known, so it may reach it"
            continue
        kept = store_decision(
            policy,
            {data_class: None},
            store_labels,
            tenant=spec.tenant,
            source_site=source_site,
            stage="training",
        ).allowed
        if kept:
            classes[data_class] = f"field {name}"
    return classes


def _source_sites(
    spec: PipelineSpec, nodes: list[tuple[str, Mapping[str, str]]] | None
) -> list[str] | None:
    """Return the sites the pipeline's data is captured at; None when they cannot be told."""
    finite = finite_values(spec.edge.where.root.get(SITE))
    if finite is not None:
        return sorted(set(finite))
    if not nodes:
        return None
    sites = {lb.get(SITE) for _, lb in nodes if spec.edge.where.matches(lb)}
    if not sites or None in sites:
        return None
    return sorted(s for s in sites if s is not None)


def derive_training_selector(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    source_labels: Iterable[Mapping[str, str]],
    *,
    store_labels: Mapping[str, str] | None = None,
) -> LabelSelector:
    """Return the selector the Ray Train job must use: ``retrain.where`` within the policy.

    ``source_labels``: the labels of the edge nodes whose samples the job trains on (their
    sites bound a ``same_site`` rule).  ``store_labels``: the store's, to know which fields
    reach training; without them every field is assumed to.

    Raises:
        PlacementError: the user's ``where`` and the policy leave no allowed node value.
    """
    where = spec.retrain.where if spec.retrain is not None else LabelSelector()
    sources = list(source_labels)
    sites = sorted({lb[SITE] for lb in sources if SITE in lb})
    source_site = sites[0] if len(sites) == 1 else None
    terms = dict(where.root)
    try:
        for data_class, origin in _training_classes(
            policy, spec, store_labels, source_site
        ).items():
            _, found = constraints(
                policy,
                data_class,
                purpose="processing",
                tenant=spec.tenant,
                source_sites=sites,
                at_capture=False,
                origin=origin,
                stage="training",
            )
            for c in found:
                current = LabelSelector.parse({c.key: terms[c.key]}) if c.key in terms else None
                values = [v for v in c.allowed if current is None or current.can_match(c.key, v)]
                if not values:
                    raise RefusedError(
                        Decision(
                            allowed=False,
                            rule=c.rule,
                            reason=f"{c.head} (rule {c.rule}); retrain.where has {c.key}: "
                            f"{terms[c.key]}, which allows none of it "
                            f"(fix: set `{c.key}: {c.expression()}` in retrain.where)",
                            stage="training",
                            label=f"{c.key}={terms[c.key]}",
                        )
                    )
                terms[c.key] = values[0] if len(values) == 1 else f"in({','.join(values)})"
    except RefusedError as refused:
        refused.decision.raise_if_refused()
    return LabelSelector.parse(terms, field="retrain.where")


def pipeline_decisions(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
) -> list[Decision]:
    """Return the policy's decision on every stage of ``spec``, refusals included, in order.

    Stages: edge (inference), uplink and store (one per known edge node, when the store is
    known), training (``retrain.where``), rollout.
    """
    nodes = node_list(known_nodes)
    decisions = [
        evaluate(
            policy,
            _edge_classes(spec),
            spec.edge.where,
            nodes,
            purpose="processing",
            tenant=spec.tenant,
            source_sites=None,
            at_capture=True,
            subject="edge stage",
            where_field="edge.where",
            stage="edge",
        )
    ]
    if store_labels is None:
        decisions.append(
            Decision(
                allowed=True,
                rule="uplink",
                reason="the store is not known: each edge node's uplink plan is decided when "
                "it connects (give the store's labels to see it)",
                stage="uplink",
            )
        )
    else:
        decisions.extend(_uplink_and_store(policy, spec, nodes, store_labels))
    if spec.retrain is not None:
        decisions.append(_training_decision(policy, spec, nodes, store_labels))
    decisions.append(
        Decision(
            allowed=True,
            rule="rollout",
            reason=f"model versions go to the nodes of edge.where ({spec.edge.where}); the "
            "policy classes data, not model weights, so rollout is not restricted by it",
            stage="rollout",
        )
    )
    return decisions


def _uplink_and_store(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    nodes: list[tuple[str, Mapping[str, str]]] | None,
    store_labels: Mapping[str, str],
) -> list[Decision]:
    """Return each known edge node's uplink plan as a decision, then the store's."""
    decisions = []
    for name, labels in nodes or ():
        if not spec.edge.where.matches(labels):
            continue
        plan = uplink_plan(policy, spec, labels, store_labels)
        rules = ", ".join(dict.fromkeys(d.rule for d in plan.decisions))
        reasons = "; ".join(d.reason for d in plan.decisions)
        decisions.append(
            Decision(
                allowed=True,
                rule=rules,
                reason=f"node {name}: {plan.describe()}: {reasons}",
                stage="uplink",
            )
        )
    sites = _source_sites(spec, nodes)
    store = store_decision(
        policy,
        {spec.data_class: "the samples"},
        store_labels,
        tenant=spec.tenant,
        source_site=sites[0] if sites and len(sites) == 1 else None,
        stage="store",
    )
    where = ", ".join(f"{k}={v}" for k, v in store_labels.items())
    reason = (
        f"store ({where}): {store.reason}"
        if store.allowed
        else f"store ({where}) receives no samples, they stay on the edge: {store.reason}"
    )
    decisions.append(Decision(allowed=True, rule=store.rule, reason=reason, stage="store"))
    return decisions


def _training_decision(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    nodes: list[tuple[str, Mapping[str, str]]] | None,
    store_labels: Mapping[str, str] | None,
) -> Decision:
    """Decide whether ``retrain.where`` keeps every class training reads inside its rule."""
    assert spec.retrain is not None
    sites = _source_sites(spec, nodes)
    return evaluate(
        policy,
        _training_classes(
            policy, spec, store_labels, sites[0] if sites and len(sites) == 1 else None
        ),
        spec.retrain.where,
        nodes,
        purpose="processing",
        tenant=spec.tenant,
        source_sites=sites,
        at_capture=False,
        subject="training",
        where_field="retrain.where",
        stage="training",
    )
