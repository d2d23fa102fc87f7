"""Placement decisions: whether a selector, a node or a store keeps a class's data inside its rule.

Deploy checks a selector (``check_placement``), serving a node (``node_may_process``,
``route``) and ingest a store (``ingest_allows``); ``evaluate`` and ``store_decision`` are
the two checks the uplink and pipeline decisions are built from.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from continuum.errors import PlacementError
from continuum.labels import SITE, LabelSelector
from continuum.residency._decision import (
    Constraint,
    Decision,
    KnownNodes,
    RefusedError,
    constraints,
    data_phrase,
    finite_values,
    node_list,
)
from continuum.residency._policy import Purpose, ResidencyPolicy
from continuum.spec import DataClass


def _check_constraint(
    c: Constraint,
    selector: LabelSelector,
    candidates: list[tuple[str, Mapping[str, str]]] | None,
    *,
    subject: str,
    where_field: str,
    stage: str,
) -> str:
    """Return why ``selector`` keeps to ``c``; raise ``RefusedError`` naming the offending node."""
    fix = f"(fix: {c.fix(where_field)})"
    expression = selector.root.get(c.key)
    for name, labels in candidates or ():
        value = labels.get(c.key)
        if value not in c.allowed:
            seen = (
                f"nodes labelled {c.key}={value}"
                if value is not None
                else (f"nodes without a {c.key} label")
            )
            loose = (
                f"; {where_field} does not constrain {c.key}"
                if expression is None
                else f"; {where_field} has {c.key}: {expression}"
            )
            raise RefusedError(
                Decision(
                    allowed=False,
                    rule=c.rule,
                    reason=f"{c.head} (rule {c.rule}); the {subject} selector allows {seen} "
                    f"(node {name}){loose} {fix}",
                    stage=stage,
                    label=f"{c.key}={value}" if value is not None else c.key,
                )
            )
    finite = finite_values(expression)
    if finite is not None:
        bad = [v for v in finite if v not in c.allowed]
        if bad:
            raise RefusedError(
                Decision(
                    allowed=False,
                    rule=c.rule,
                    reason=f"{c.head} (rule {c.rule}); the {subject} selector allows nodes "
                    f"labelled {c.key}={bad[0]} {fix}",
                    stage=stage,
                    label=f"{c.key}={bad[0]}",
                )
            )
        return f"{where_field} pins {c.key} to {', '.join(finite)}"
    loose = (
        f"{where_field} does not constrain {c.key}"
        if expression is None
        else f"{where_field} has {c.key}: {expression}, which nodes outside the rule could match"
    )
    if not candidates:
        known = "no nodes are known" if candidates is None else "no known node matches it"
        raise RefusedError(
            Decision(
                allowed=False,
                rule=c.rule,
                reason=f"{c.head} (rule {c.rule}); {loose} and {known}, so nothing shows the "
                f"{subject} stays inside the rule {fix}",
                stage=stage,
                label=c.key,
            )
        )
    return (
        f"{loose}, but every known node it matches ({len(candidates)}) satisfies the rule; "
        f"{c.fix(where_field)} so that nodes that join later are held to it too"
    )


def evaluate(
    policy: ResidencyPolicy,
    classes: Mapping[DataClass, str | None],
    selector: LabelSelector,
    nodes: list[tuple[str, Mapping[str, str]]] | None,
    *,
    purpose: Purpose,
    tenant: str | None,
    source_sites: Collection[str] | None,
    at_capture: bool,
    subject: str,
    where_field: str,
    stage: str,
) -> Decision:
    """Decide whether ``selector`` keeps data of every class in ``classes`` inside its rule.

    ``classes`` maps each class to where it comes from in the sample (None: the samples
    themselves), for the reasons.  A refusal is returned, not raised.
    """
    candidates = None if nodes is None else [(n, lb) for n, lb in nodes if selector.matches(lb)]
    rules: list[str] = []
    reasons: list[str] = []
    try:
        for data_class in sorted(classes, key=lambda c: c.rank, reverse=True):
            path, found = constraints(
                policy,
                data_class,
                purpose=purpose,
                tenant=tenant,
                source_sites=source_sites,
                at_capture=at_capture,
                origin=classes[data_class],
                stage=stage,
            )
            what = data_phrase(data_class, classes[data_class])
            if not found:
                verb = "processed" if purpose == "processing" else "stored"
                anywhere = "at the capture site" if at_capture else "anywhere"
                rules.append(path)
                reasons.append(f"{what} may be {verb} {anywhere} (rule {path})")
            for c in found:
                why = _check_constraint(
                    c, selector, candidates, subject=subject, where_field=where_field, stage=stage
                )
                rules.append(c.rule)
                reasons.append(f"{c.head} (rule {c.rule}): {why}")
            if at_capture and policy.rule(data_class, purpose, tenant)[1].same_site:
                rules.append(f"{path}.same_site")
                reasons.append(
                    f"{what} may not leave its capture site (rule {path}.same_site): the "
                    f"{subject} runs where the data is captured"
                )
    except RefusedError as refused:
        return refused.decision
    return Decision.allowing(rules, reasons, stage)


def check_placement(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    selector: LabelSelector | Mapping[str, str],
    known_nodes: KnownNodes,
    *,
    purpose: Purpose,
    tenant: str | None = None,
    source_sites: Collection[str] | None = None,
    subject: str = "placement",
    where_field: str = "where",
) -> Decision:
    """Allow work on ``data_class`` data where ``selector`` may place it, or refuse.

    Every node the selector could use must satisfy the class's rule: either the selector
    pins each constrained label key to allowed values, or (a key it leaves open) every known
    node it matches satisfies the rule.  A ``same_site`` rule needs ``source_sites``, the
    sites the data was captured at.

    Raises:
        PlacementError: a node the selector allows is outside the rule; the message names
            the rule, the offending label and node, and the fix.
    """
    return evaluate(
        policy,
        {DataClass.parse(data_class): None},
        LabelSelector.parse(selector, field=where_field),
        node_list(known_nodes),
        purpose=purpose,
        tenant=tenant,
        source_sites=source_sites,
        at_capture=False,
        subject=subject,
        where_field=where_field,
        stage="placement",
    ).raise_if_refused()


def node_may_process(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    node: str,
    labels: Mapping[str, str],
    *,
    origin_site: str | None,
    tenant: str | None = None,
) -> Decision:
    """Allow the node ``node`` (labelled ``labels``) to process ``data_class`` data captured
    at ``origin_site``, or refuse: the check for one concrete node, not a selector.

    Raises:
        PlacementError: its labels are outside the class's processing rule; the message
            names the rule and the offending label.
    """
    return check_placement(
        policy,
        data_class,
        dict(labels),
        {node: labels},
        purpose="processing",
        tenant=tenant,
        source_sites=[origin_site] if origin_site is not None else None,
        subject=f"node {node}",
        where_field=f"the labels of node {node}",
    )


def route(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    origin_site: str | None,
    endpoints: Mapping[str, Mapping[str, str]],
    *,
    tenant: str | None = None,
) -> tuple[str, Decision]:
    """Choose where an inference request of ``data_class``, captured at ``origin_site``, runs.

    ``endpoints`` (name -> the labels of the node serving the model) are tried in the
    caller's order of preference, e.g. the central pool first and the on-site server last:
    the first whose labels satisfy the class's processing rule serves it.  A request that
    may not leave its site is thus served on site, and others may use the central pool.

    Raises:
        PlacementError: no endpoint may process it; the message gives each one's refusal.
    """
    refusals: list[str] = []
    last: PlacementError | None = None
    for name, labels in endpoints.items():
        try:
            decision = node_may_process(
                policy, data_class, name, labels, origin_site=origin_site, tenant=tenant
            )
        except PlacementError as refused:
            refusals.append(f"{name}: {refused}")
            last = refused
            continue
        return name, decision
    raise PlacementError(
        f"no endpoint may serve {DataClass.parse(data_class).value} data captured at site "
        f"{origin_site or '(unknown)'}: " + "; ".join(refusals or ["no endpoints given"]),
        rule=last.rule if last is not None else "route",
        label=last.label if last is not None else None,
    )


def store_decision(
    policy: ResidencyPolicy,
    classes: Mapping[DataClass, str | None],
    store_labels: Mapping[str, str],
    *,
    tenant: str | None,
    source_site: str | None,
    stage: str,
) -> Decision:
    """Decide whether a store labelled ``store_labels`` may hold data of every class in
    ``classes``; a refusal is returned, not raised."""
    rules: list[str] = []
    reasons: list[str] = []
    try:
        for data_class in sorted(classes, key=lambda c: c.rank, reverse=True):
            path, found = constraints(
                policy,
                data_class,
                purpose="storage",
                tenant=tenant,
                source_sites=None if source_site is None else [source_site],
                at_capture=False,
                origin=classes[data_class],
                stage=stage,
            )
            if not found:
                rules.append(path)
                reasons.append(
                    f"{data_phrase(data_class, classes[data_class])} may be stored anywhere"
                )
            for c in found:
                value = store_labels.get(c.key)
                if value not in c.allowed:
                    seen = (
                        f"labelled {c.key}={value}"
                        if value is not None
                        else (f"has no {c.key} label")
                    )
                    raise RefusedError(
                        Decision(
                            allowed=False,
                            rule=c.rule,
                            reason=f"{c.head} (rule {c.rule}); the store is {seen}",
                            stage=stage,
                            label=f"{c.key}={value}" if value is not None else c.key,
                        )
                    )
                rules.append(c.rule)
                reasons.append(f"{c.head} (rule {c.rule}): the store is labelled {c.key}={value}")
    except RefusedError as refused:
        return refused.decision
    return Decision.allowing(rules, reasons, stage)


def ingest_allows(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    node_labels: Mapping[str, str],
    store_labels: Mapping[str, str],
    *,
    tenant: str | None = None,
) -> Decision:
    """Decide whether a sample of ``data_class`` from a node labelled ``node_labels`` may be stored.

    Use the higher of the batch's class and its pipeline's.  A refusal is returned, not
    raised: ingest rejects the batch, counts it and writes the decision to the audit log.
    """
    return store_decision(
        policy,
        {DataClass.parse(data_class): None},
        store_labels,
        tenant=tenant,
        source_site=node_labels.get(SITE),
        stage="ingest",
    )
