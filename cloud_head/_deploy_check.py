"""The checks at deploy (DESIGN.md §6): model names unique per tenant, then every stage against
the residency policy, recorded first.

``check_deploy`` checks each pipeline against the policy, the nodes a placement could reach
(``known_nodes``) and the store's labels, then refuses pipelines of one tenant that name the
same model, in the deploy or in the registry (``refuse_shared_model_names``,
``registered_models``), and records the outcome in the tenant's audit log before anything
starts: a refusal (``policy_refusal``, then ``PlacementError``) or one ``deploy`` record per
pipeline. Retraining follows the policy's plan (``training_plan``): one central job with the
selector the policy derives, or federated rounds at the data's sites where the policy keeps
the data there and each site has a Ray node that may train (``check_deploy_plans``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_head.audit import AuditAction, canonical_json
from continuum.errors import PlacementError, SpecError
from continuum.residency import (
    Decision,
    ResidencyPolicy,
    TrainingPlan,
    load_policy,
    pipeline_decisions,
    training_plan,
)

if TYPE_CHECKING:
    from cloud_head.audit import AuditTrail
    from cloud_head.paths import HeadPaths
    from continuum.spec import PipelineSpec

__all__ = [
    "check_deploy",
    "check_deploy_plans",
    "known_nodes",
    "load_residency",
    "policy_yaml",
    "refuse_shared_model_names",
    "registered_models",
    "spec_digest",
]


def load_residency(policy: str | Path | ResidencyPolicy | None) -> ResidencyPolicy | None:
    """Return the policy parsed (a YAML file's path, or one parsed already), or None."""
    if policy is None or isinstance(policy, ResidencyPolicy):
        return policy
    return load_policy(policy)


def policy_yaml(policy: ResidencyPolicy) -> str:
    """Return the policy as YAML text, the form the ingest replicas take it in."""
    import yaml

    return str(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False))


def spec_digest(spec: PipelineSpec) -> str:
    """Return the sha256 of the spec's canonical JSON: which pipeline, exactly, was deployed."""
    return hashlib.sha256(canonical_json(spec.model_dump(mode="json")).encode()).hexdigest()


def known_nodes(tenant: str, paths: HeadPaths) -> dict[str, dict[str, str]]:
    """Return every node a placement could reach: the tenant's fleet and the Ray cluster's.

    Fleet nodes keep their names; Ray nodes are named ``ray:<node id prefix>``.
    """
    import ray

    from cloud_head.fleet import FleetRegistry

    with FleetRegistry(tenant, paths.fleet_db(tenant)) as fleet:
        nodes = {n.node: n.labels for n in fleet.nodes() if n.status is not None}
    if ray.is_initialized():
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("Alive"):
                nodes[f"ray:{str(node.get('NodeID', ''))[:12]}"] = dict(node.get("Labels") or {})
    return nodes


def check_deploy(
    audit: AuditTrail,
    specs: Sequence[PipelineSpec],
    policy: ResidencyPolicy | None,
    nodes: Mapping[str, Mapping[str, str]] | None,
    *,
    store_labels: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    registered: Mapping[str, str] | None = None,
) -> dict[str, dict[str, str] | None]:
    """Check and record as ``check_deploy_plans``; return each pipeline's central training
    selector (None: no policy, or a federated plan, which has one selector per site).

    Raises:
        SpecError, PlacementError, AuditWriteError: as ``check_deploy_plans``.
    """
    plans = check_deploy_plans(
        audit,
        specs,
        policy,
        nodes,
        store_labels=store_labels,
        details=details,
        registered=registered,
    )
    return {
        name: None if plan is None or plan.selector is None else dict(plan.selector.root)
        for name, plan in plans.items()
    }


def check_deploy_plans(
    audit: AuditTrail,
    specs: Sequence[PipelineSpec],
    policy: ResidencyPolicy | None,
    nodes: Mapping[str, Mapping[str, str]] | None,
    *,
    store_labels: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    registered: Mapping[str, str] | None = None,
    compute_nodes: Collection[str] | None = None,
) -> dict[str, TrainingPlan | None]:
    """Check every pipeline against ``policy``; record the deploy or the refusal; return plans.

    Each pipeline's decisions (allowed and refused) are recorded: a refusal as a
    ``policy_refusal`` record, written before ``PlacementError`` is raised; when every
    pipeline passes, one ``deploy`` record per pipeline with its spec digest, placement,
    decisions and training plan.  Returns, per pipeline, the policy's training plan (None:
    no policy or no retrain stage; the spec's ``retrain.where`` applies).  ``registered`` is
    the registry's model -> pipeline (``registered_models``), checked with the deploy's own
    pipelines.  ``compute_nodes``: the names in ``nodes`` that can run training (Ray nodes);
    None: those named ``ray:...`` as ``known_nodes`` names them, or all when none is.

    Raises:
        SpecError: two pipelines name the same model, in the deploy or with the registry
            (no deploy record is written).
        PlacementError: a stage or the training job would put data where the policy forbids,
            and federated training cannot keep it in (no node that may train at a site).
        AuditWriteError: a record could not be written.
    """
    context = {
        "known_nodes": sorted(nodes or {}),
        "store_labels": None if store_labels is None else dict(store_labels),
    }
    if compute_nodes is None and nodes and any(n.startswith("ray:") for n in nodes):
        compute_nodes = [n for n in nodes if n.startswith("ray:")]
    planned: list[tuple[PipelineSpec, list[Decision], TrainingPlan | None]] = []
    for spec in specs:
        decisions: list[Decision] = []
        plan: TrainingPlan | None = None
        if policy is not None:
            decisions, plan, refused = _decide(spec, policy, nodes, store_labels, compute_nodes)
            if refused is not None:
                audit.record(
                    AuditAction.POLICY_REFUSAL,
                    spec.name,
                    {
                        "spec_digest": spec_digest(spec),
                        "refused": refused.to_record(),
                        "decisions": [d.to_record() for d in decisions],
                    }
                    | context,
                )
                refused.raise_if_refused()
        planned.append((spec, decisions, plan))
    # After the policy: a deploy it refuses is recorded as such whatever its model names.
    refuse_shared_model_names(specs, registered)
    for spec, decisions, plan in planned:
        training: dict[str, Any] | None = None
        if plan is not None:
            training = (
                dict(plan.selector.root)
                if plan.selector is not None
                else {s: dict(v.root) for s, v in plan.site_selectors.items()}
            )
        elif spec.retrain is not None:
            training = dict(spec.retrain.where.root)
        audit.record(
            AuditAction.DEPLOY,
            spec.name,
            {
                "spec_digest": spec_digest(spec),
                "data_class": spec.data_class.value,
                "placement": {"edge": dict(spec.edge.where.root), "training": training},
                "policy": "none: no residency check" if policy is None else "checked",
                "decisions": [d.to_record() for d in decisions],
                "training_plan": None if plan is None else plan.to_record(),
            }
            | context
            | dict(details or {}),
        )
    return {spec.name: plan for spec, _, plan in planned}


def registered_models(tenant: str, paths: HeadPaths) -> dict[str, str]:
    """Return model name -> the pipeline whose versions the registry holds under it."""
    registry = paths.open_registry()
    try:
        return {version.model: version.pipeline for version in registry.list(tenant)}
    finally:
        registry.close()


def refuse_shared_model_names(
    specs: Sequence[PipelineSpec], registered: Mapping[str, str] | None = None
) -> None:
    """Refuse pipelines of one tenant that name the same model, in ``specs`` or ``registered``.

    A model's artifact topics (``ctm/{tenant}/models/{model}/{version}/...``) and the
    signature over (model, version, sha256) name the tenant and the model, not the pipeline:
    two pipelines sharing a model name would share their artifacts, and a version signed for
    one would be valid for the other.  A model name is therefore unique per tenant, also
    against versions the registry holds for another pipeline (one removed or renamed since).

    Args:
        specs: the pipelines deployed together (one tenant's, as a deploy takes them).
        registered: model name -> the pipeline the registry holds its versions for.

    Raises:
        SpecError: naming every model that more than one pipeline names, its pipelines and
            the fix (rename all but one of the models).
    """
    owners: dict[tuple[str, str], list[str]] = {}
    for spec in specs:
        names = owners.setdefault((spec.tenant, spec.edge.model), [])
        owner = (registered or {}).get(spec.edge.model)
        if owner is not None and owner not in names:
            names.append(owner)
        if spec.name not in names:
            names.append(spec.name)
    shared = {key: names for key, names in owners.items() if len(names) > 1}
    if not shared:
        return
    clashes = "; ".join(
        f"pipelines {', '.join(repr(n) for n in names)} of tenant {tenant!r} all name "
        f"model {model!r}"
        for (tenant, model), names in shared.items()
    )
    (_, model), names = next(iter(shared.items()))
    # Names the registry brought in: pipelines not deployed now, or deployed with another model.
    deployed = {spec.name: spec.edge.model for spec in specs}
    held = sorted({n for (_, m), group in shared.items() for n in group if deployed.get(n) != m})
    registry_note = (
        f" (the model registry holds versions of it for {', '.join(repr(n) for n in held)})"
        if held
        else ""
    )
    raise SpecError(
        f"{clashes}{registry_note}: a model's artifact topics and signatures name the tenant "
        "and the model, not the pipeline, so one pipeline's model versions would be valid "
        "for the other",
        field="edge.model",
        fix=f"rename the model of all but one pipeline (e.g. edge.model: {names[-1]}-{model} "
        f"in pipeline {names[-1]!r}); a model name is unique per tenant",
    )


def _decide(
    spec: PipelineSpec,
    policy: ResidencyPolicy,
    nodes: Mapping[str, Mapping[str, str]] | None,
    store_labels: Mapping[str, str] | None,
    compute_nodes: Collection[str] | None,
) -> tuple[list[Decision], TrainingPlan | None, Decision | None]:
    """Return one pipeline's decisions, its training plan and the first refusal, if any.

    The training stage's own refusal (central training would take the data out of its site
    or jurisdiction) is the plan's to settle: federated where each site has a node.
    """
    decisions = pipeline_decisions(policy, spec, nodes, store_labels=store_labels)
    refused = next((d for d in decisions if not d.allowed and d.stage != "training"), None)
    if refused is not None or spec.retrain is None:
        return decisions, None, refused
    try:
        plan = training_plan(
            policy, spec, nodes, store_labels=store_labels, compute_nodes=compute_nodes
        )
    except PlacementError as error:
        refusal = Decision(
            allowed=False,
            rule=error.rule or "retrain.where",
            reason=str(error),
            stage="training",
            label=error.label,
        )
        return decisions, None, refusal
    if plan.mode == "federated":
        decisions = [d for d in decisions if d.stage != "training"]
        at = decisions[-1:] if decisions and decisions[-1].stage == "rollout" else []
        decisions = decisions[: len(decisions) - len(at)]
        decisions.append(
            Decision(
                allowed=True,
                rule=plan.rule,
                reason=f"federated retraining: {plan.reason}",
                stage="training",
            )
        )
        decisions += at
    else:
        decisions.append(
            Decision(
                allowed=True,
                rule="retrain.where",
                reason=f"the training job runs with selector {plan.selector}",
                stage="training",
            )
        )
    return decisions, plan, None
