"""A pipeline against the policy as a whole, for deploy's check and for people: every stage's
decision with the training plan settling the training job (``check_pipeline``), and the
same said stage by stage, then the plan per data class (``explain``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from continuum.errors import PlacementError
from continuum.residency._decision import Decision, KnownNodes, node_list
from continuum.residency._pipeline import (
    _source_sites,
    _training_classes,
    pipeline_decisions,
)
from continuum.residency._policy import ResidencyPolicy
from continuum.residency._training_plan import training_plan
from continuum.spec import PipelineSpec

__all__ = ["check_pipeline", "explain"]


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
        # The stage's refusal is of one central job; the plan below may train federated.
        after = (
            " (as one central job: the training plan below decides)"
            if (decision.stage == "training" and not decision.allowed)
            else ""
        )
        lines.append(
            f"{titles.get(decision.stage, decision.stage)}: {verdict}: {decision.reason}{after}"
        )
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
