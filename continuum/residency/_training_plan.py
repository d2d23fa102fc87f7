"""Where a pipeline retrains, as the policy decides: central, federated, or refused.

``training_plan`` asks first whether the training job may run as one central job (the
checks deploy has always made, and ``derive_training_selector``).  Where the policy keeps the
data at its site or jurisdiction and that forbids pooling it, learning comes to the data
(DESIGN.md §6): each source site trains on its own samples on its own nodes, and only model
updates, metrics and sample counts cross to the aggregator.  That needs, at every source site,
a node the policy lets process the data; without one the plan is refused naming the rule and
the node that would fix it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from continuum.errors import PlacementError
from continuum.labels import SITE, LabelSelector
from continuum.residency._decision import (
    Decision,
    KnownNodes,
    RefusedError,
    constraints,
    node_list,
)
from continuum.residency._pipeline import (
    _source_sites,
    _training_classes,
    _training_decision,
    derive_training_selector,
)
from continuum.residency._policy import ResidencyPolicy
from continuum.spec import PipelineSpec

__all__ = ["CROSSES", "TrainingPlan", "training_plan"]

#: What leaves a site in federated training; never a sample.
CROSSES: tuple[str, ...] = ("model updates", "metrics", "sample counts")


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """Where a pipeline's retraining runs, and why (for the controller, the audit log and
    ``policy explain``).

    ``mode``: one central job placed by ``selector``, or federated rounds with one trainer per
    site placed by ``site_selectors[site]``; ``sites`` names, per source site, the known nodes
    there that may process its data.  ``aggregator`` is where model updates meet (the central
    pool: they are not samples); ``crosses`` what leaves a site (nothing in central mode).
    ``rule`` is the policy path that decided, ``reason`` the words.
    """

    mode: Literal["central", "federated"]
    rule: str
    reason: str
    selector: LabelSelector | None = None
    sites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    site_selectors: Mapping[str, LabelSelector] = field(default_factory=dict)
    aggregator: LabelSelector = field(default_factory=LabelSelector)
    crosses: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data (audit log, deploy hand-over to the controller)."""
        return {
            "mode": self.mode,
            "rule": self.rule,
            "reason": self.reason,
            "selector": None if self.selector is None else dict(self.selector.root),
            "sites": {s: list(n) for s, n in sorted(self.sites.items())},
            "site_selectors": {s: dict(v.root) for s, v in sorted(self.site_selectors.items())},
            "aggregator": dict(self.aggregator.root),
            "crosses": list(self.crosses),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainingPlan:
        """Rebuild a plan from ``to_record``'s data."""
        selector = record.get("selector")
        return cls(
            mode=record["mode"],
            rule=str(record["rule"]),
            reason=str(record["reason"]),
            selector=None if selector is None else LabelSelector.parse(selector),
            sites={str(s): tuple(n) for s, n in dict(record.get("sites") or {}).items()},
            site_selectors={
                str(s): LabelSelector.parse(v)
                for s, v in dict(record.get("site_selectors") or {}).items()
            },
            aggregator=LabelSelector.parse(record.get("aggregator") or {}),
            crosses=tuple(record.get("crosses") or ()),
        )

    def describe(self) -> str:
        """Say the plan in one line: ``federated over 3 sites (a: 1 node, ...)``."""
        if self.mode == "central":
            return f"central: one training job with selector {self.selector}"
        sites = ", ".join(f"{s}: {', '.join(n)}" for s, n in sorted(self.sites.items()))
        return (
            f"federated over {len(self.sites)} site(s) ({sites}); aggregated at "
            f"{self.aggregator or 'any node'}; crosses: {', '.join(self.crosses)}"
        )


def training_plan(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
    compute_nodes: Collection[str] | None = None,
) -> TrainingPlan:
    """Plan ``spec``'s retraining under ``policy``: central, federated, or refuse.

    Args:
        known_nodes: the nodes of the cluster and the fleet, by name (labels); the edge nodes
            among them tell the sites the data comes from.
        store_labels: the central store's labels (which fields reach it).
        compute_nodes: the names among ``known_nodes`` that can run training work (Ray
            nodes); None: all of them.  An MQTT-only agent captures data but cannot train.

    Raises:
        PlacementError: neither plan keeps to the policy; the message names the rule and what
            would fix it (e.g. join a node labelled ``continuum.io/site=X``).
        ValueError: the spec declares no retrain stage.
    """
    if spec.retrain is None:
        raise ValueError(f"pipeline {spec.name!r} declares no retrain stage")
    nodes = node_list(known_nodes)
    central = _training_decision(policy, spec, nodes, store_labels)
    sites = _source_sites(spec, nodes)
    refusal = central
    if central.allowed:
        sources = [lb for _, lb in nodes or () if spec.edge.where.matches(lb)]
        if not sources and sites:
            sources = [{SITE: s} for s in sites]
        try:
            selector = derive_training_selector(policy, spec, sources, store_labels=store_labels)
        except PlacementError as error:
            refusal = Decision(
                allowed=False,
                rule=error.rule or "retrain.where",
                reason=str(error),
                stage="training",
                label=error.label,
            )
        else:
            return TrainingPlan(
                mode="central",
                rule=central.rule,
                reason=f"{central.reason}; the training job runs with selector {selector}",
                selector=selector,
                aggregator=selector,
            )
    return _federated(policy, spec, nodes, sites, refusal, store_labels, compute_nodes)


def _federated(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    nodes: list[tuple[str, Mapping[str, str]]] | None,
    sites: list[str] | None,
    refusal: Decision,
    store_labels: Mapping[str, str] | None,
    compute_nodes: Collection[str] | None,
) -> TrainingPlan:
    """Plan one trainer per source site, or raise the central refusal with the federated fix."""
    assert spec.retrain is not None
    if not sites:
        raise PlacementError(
            f"{refusal.reason}; federated training, which keeps each site's data at its site, "
            f"needs the sites the data comes from (fix: pin {SITE} in edge.where, or let the "
            "edge nodes join so their labels are known)",
            rule=refusal.rule,
            label=refusal.label,
        )
    classes = _training_classes(policy, spec, store_labels, None)
    selectors: dict[str, LabelSelector] = {}
    members: dict[str, tuple[str, ...]] = {}
    missing: list[str] = []
    rules: list[str] = []
    for site in sites:
        terms, site_rules = _site_terms(policy, spec, classes, site)
        rules.extend(site_rules)
        selector = LabelSelector.parse(terms, field="federated site selector")
        selectors[site] = selector
        found = tuple(
            name
            for name, labels in nodes or ()
            if selector.matches(labels) and (compute_nodes is None or name in compute_nodes)
        )
        members[site] = found
        if not found:
            missing.append(", ".join(f"{k}={v}" for k, v in terms.items()))
    if missing:
        raise PlacementError(
            f"{refusal.reason}; federated training would keep each site's data at its site, "
            f"but no known node there may process it (fix: join a node labelled "
            f"{' and one labelled '.join(missing)} to the Ray cluster)",
            rule=refusal.rule,
            label=refusal.label,
        )
    aggregator = LabelSelector.parse(dict(spec.retrain.where.root), field="retrain.where")
    rule = ", ".join(dict.fromkeys([refusal.rule, *rules]))
    counts = "; ".join(f"{s}: {len(members[s])} node(s)" for s in sites)
    reason = (
        f"central training is refused: {refusal.reason}; so each of {len(sites)} site(s) trains "
        f"on its own data on its own nodes ({counts}), "
        f"and only {', '.join(CROSSES)} cross to the aggregator on retrain.where "
        f"({aggregator or 'any node'}): the policy classes samples, not model weights, metrics "
        "or counts"
    )
    return TrainingPlan(
        mode="federated",
        rule=rule,
        reason=reason,
        sites=members,
        site_selectors=selectors,
        aggregator=aggregator,
        crosses=CROSSES,
    )


def _site_terms(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    classes: Mapping[Any, str | None],
    site: str,
) -> tuple[dict[str, str], list[str]]:
    """Return the selector terms of ``site``'s trainer (its site and the policy's labels)."""
    terms: dict[str, str] = {SITE: site}
    rules: list[str] = []
    for data_class, origin in classes.items():
        try:
            _, found = constraints(
                policy,
                data_class,
                purpose="processing",
                tenant=spec.tenant,
                source_sites=[site],
                at_capture=False,
                origin=origin,
                stage="training",
            )
        except RefusedError as refused:  # pragma: no cover - one source site never refuses
            refused.decision.raise_if_refused()
            raise
        for c in found:
            rules.append(c.rule)
            current = terms.get(c.key)
            now = None if current is None else LabelSelector.parse({c.key: current})
            values = [v for v in c.allowed if now is None or now.can_match(c.key, v)]
            if not values:
                raise PlacementError(
                    f"{c.head} (rule {c.rule}), but the data comes from site {site}: no node "
                    f"can be both (fix: check the policy's {c.rule})",
                    rule=c.rule,
                    label=f"{c.key}={current}",
                )
            terms[c.key] = values[0] if len(values) == 1 else f"in({','.join(values)})"
    return terms, rules
