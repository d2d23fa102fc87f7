"""A pipeline's decisions, stage by stage: deploy's check, ``explain``, the training selector.

Built from the placement and uplink decisions: the edge stage where it runs, each edge
node's uplink plan, the store, the training job (``derive_training_selector`` narrows
``retrain.where`` to the policy) and rollout.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from continuum.errors import PlacementError
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


def check_pipeline(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
    compute_nodes: Collection[str] | None = None,
) -> list[Decision]:
    """Check ``spec`` at deploy: return every decision, or refuse at the first breach.

    Training that may not run centrally is settled by the training plan: federated where
    each source site has a node that may train (``training_plan``; ``compute_nodes``: the
    known nodes that can run training, None: all), refused otherwise.

    Raises:
        PlacementError: the edge stage or the training job could put data where the policy
            forbids it; the message names the rule, the offending label and the fix.
    """
    from continuum.residency._training_plan import training_plan

    decisions = pipeline_decisions(policy, spec, known_nodes, store_labels=store_labels)
    for index, decision in enumerate(decisions):
        if not decision.allowed and decision.stage == "training" and spec.retrain is not None:
            plan = training_plan(
                policy,
                spec,
                known_nodes,
                store_labels=store_labels,
                compute_nodes=compute_nodes,
            )
            decisions[index] = Decision(
                allowed=True,
                rule=plan.rule,
                reason=f"{plan.mode} retraining: {plan.reason}",
                stage="training",
            )
        decisions[index].raise_if_refused()
    return decisions


def explain(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
    compute_nodes: Collection[str] | None = None,
) -> list[str]:
    """Return, stage by stage, where the pipeline's data may go and why, for people; then
    the training plan (``compute_nodes``: the known nodes that can train, None: all)."""
    lines = [f"pipeline {spec.name} (tenant {spec.tenant}, data class {spec.data_class.value})"]
    fields = spec.edge.input.fields
    if fields:
        lines.append("  fields: " + ", ".join(f"{n} ({c.value})" for n, c in fields.items()))
    titles = {
        "edge": "edge inference",
        "uplink": "uplink",
        "store": "ingest/store",
        "training": "training",
        "rollout": "rollout",
    }
    decisions = pipeline_decisions(policy, spec, known_nodes, store_labels=store_labels)
    for decision in decisions:
        verdict = "allowed" if decision.allowed else "REFUSED"
        lines.append(f"{titles.get(decision.stage, decision.stage)}: {verdict}: {decision.reason}")
        if decision.stage == "uplink" and store_labels is not None:
            continue
    if spec.retrain is not None:
        lines.extend(_plan_lines(policy, spec, known_nodes, store_labels, compute_nodes))
    return lines


def _plan_lines(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    store_labels: Mapping[str, str] | None,
    compute_nodes: Collection[str] | None,
) -> list[str]:
    """Say the training plan: per data class training reads, its rule; central or federated,
    which nodes may train, what crosses a site's border, and which rule decides."""
    from continuum.residency._training_plan import training_plan

    nodes = node_list(known_nodes)
    sites = _source_sites(spec, nodes)
    classes = _training_classes(
        policy, spec, store_labels, sites[0] if sites and len(sites) == 1 else None
    )
    lines = ["training plan:"]
    for data_class, origin in classes.items():
        path, rule = policy.rule(data_class, "processing", spec.tenant)
        what = "anywhere" if rule.is_empty() else rule.model_dump(mode="json")
        lines.append(
            f"  {data_class.value} data{f' ({origin})' if origin else ''}: rule {path}: {what}"
        )
    try:
        plan = training_plan(
            policy, spec, known_nodes, store_labels=store_labels, compute_nodes=compute_nodes
        )
    except PlacementError as error:
        lines.append(f"  REFUSED (rule {error.rule}): {error}")
        return lines
    if plan.mode == "central":
        lines.append(f"  central: one job; the training job runs with selector: {plan.selector}")
        lines.append("  crosses a site's border: the samples, to the central store and job")
    else:
        lines.append(f"  federated over {len(plan.sites)} site(s):")
        for site, members in sorted(plan.sites.items()):
            lines.append(
                f"    site {site}: trains on {', '.join(members)} "
                f"(selector {plan.site_selectors[site]})"
            )
        lines.append(f"  aggregated on: {plan.aggregator or 'any node'}")
        lines.append(f"  crosses a site's border: {', '.join(plan.crosses)}; never a sample")
    lines.append(f"  decided by rule {plan.rule}: {plan.reason}")
    return lines
