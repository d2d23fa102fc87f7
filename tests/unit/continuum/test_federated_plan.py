"""The training plan: central where the policy lets the data be pooled, federated where it keeps
the data at its sites and each site has a node that may train, refused (with the fix) else."""

from __future__ import annotations

from typing import Any

import pytest

from continuum.errors import PlacementError
from continuum.labels import JURISDICTION, SITE, TIER, LabelSelector
from continuum.residency import (
    CROSSES,
    ResidencyPolicy,
    TrainingPlan,
    check_pipeline,
    explain,
    training_plan,
)
from continuum.spec import PipelineSpec

POLICY = ResidencyPolicy.from_dict(
    {
        "classes": {
            "public": {},
            "internal": {},
            "confidential": {"jurisdiction": ["LU"]},
            "restricted": {"same_site": True},
        }
    }
)

CLOUD = {TIER: "cloud", SITE: "fra-dc", JURISDICTION: "DE"}
CLOUD_LU = {TIER: "cloud", SITE: "lux-dc", JURISDICTION: "LU"}


def hospital(site: str, tier: str = "edge") -> dict[str, str]:
    return {TIER: tier, SITE: site, JURISDICTION: "LU"}


def spec(data_class: str, *, retrain_where: dict[str, str] | None = None) -> PipelineSpec:
    data: dict[str, Any] = {
        "name": "tumour-risk",
        "tenant": "medica",
        "data_class": data_class,
        "edge": {
            "model": "risk-mlp",
            "input": {"shape": [30]},
            "where": {TIER: "edge", SITE: "hospital-*"},
        },
        "uplink": {"policy": {"kind": "random", "rate": 0.1}},
        "retrain": {"trainer": "pkg.mod:train", "where": retrain_where or {TIER: "cloud"}},
    }
    return PipelineSpec.from_dict(data)


def three_hospitals(*, with_servers: bool = True) -> dict[str, dict[str, str]]:
    nodes = {"cloud-1": CLOUD}
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        nodes[f"agent-{site}"] = hospital(site)
        if with_servers:
            nodes[f"ray:{site}"] = hospital(site, tier="site")
    return nodes


class TestCentralWherePoolingIsAllowed:
    def test_internal_data_trains_centrally_on_retrain_where(self) -> None:
        plan = training_plan(POLICY, spec("internal"), three_hospitals())
        assert plan.mode == "central"
        assert plan.selector == LabelSelector.parse({TIER: "cloud"})
        assert plan.crosses == ()

    def test_confidential_data_trains_centrally_in_its_jurisdiction(self) -> None:
        nodes = three_hospitals() | {"cloud-lu": CLOUD_LU}
        plan = training_plan(
            POLICY, spec("confidential", retrain_where={TIER: "cloud", JURISDICTION: "LU"}), nodes
        )
        assert plan.mode == "central"
        assert plan.selector is not None and plan.selector.root[JURISDICTION] == "LU"


class TestFederatedWhereDataStaysAtItsSites:
    def test_restricted_data_of_three_sites_trains_at_each_site(self) -> None:
        plan = training_plan(
            POLICY,
            spec("restricted"),
            three_hospitals(),
            compute_nodes={"cloud-1", "ray:hospital-a", "ray:hospital-b", "ray:hospital-c"},
        )
        assert plan.mode == "federated"
        assert plan.sites == {
            "hospital-a": ("ray:hospital-a",),
            "hospital-b": ("ray:hospital-b",),
            "hospital-c": ("ray:hospital-c",),
        }
        assert plan.site_selectors["hospital-b"].root == {SITE: "hospital-b"}
        assert plan.crosses == CROSSES
        assert "restricted.same_site" in plan.rule
        assert plan.aggregator.root == {TIER: "cloud"}

    def test_confidential_data_whose_pool_is_abroad_trains_at_its_sites_in_jurisdiction(
        self,
    ) -> None:
        plan = training_plan(POLICY, spec("confidential"), three_hospitals())
        assert plan.mode == "federated"
        assert plan.site_selectors["hospital-a"].root == {SITE: "hospital-a", JURISDICTION: "LU"}
        assert "confidential.jurisdiction" in plan.rule

    def test_the_plan_round_trips_through_its_record(self) -> None:
        plan = training_plan(POLICY, spec("restricted"), three_hospitals())
        assert TrainingPlan.from_record(plan.to_record()) == plan


class TestRefusedWithTheFix:
    def test_a_site_without_a_node_that_may_train_is_named_in_the_fix(self) -> None:
        nodes = three_hospitals()
        compute = {"cloud-1", "ray:hospital-a", "ray:hospital-b"}  # hospital-c: agents only
        with pytest.raises(PlacementError) as refused:
            training_plan(POLICY, spec("restricted"), nodes, compute_nodes=compute)
        assert refused.value.rule == "restricted.same_site"
        assert f"join a node labelled {SITE}=hospital-c" in str(refused.value)
        assert "hospital-a" not in str(refused.value).split("fix:")[1]

    def test_unknown_source_sites_are_refused_naming_the_site_label(self) -> None:
        data = spec("restricted").model_dump(mode="json")
        data["edge"]["where"] = {TIER: "edge"}
        with pytest.raises(PlacementError, match=r"pin continuum\.io/site in edge\.where"):
            training_plan(POLICY, PipelineSpec.model_validate(data), {"cloud-1": CLOUD})


class TestPolicyExplainSaysThePlan:
    def test_federated_plan_names_each_site_s_trainers_what_crosses_and_the_rule(self) -> None:
        nodes = three_hospitals()
        compute = [n for n in nodes if n.startswith("ray:")]
        lines = explain(POLICY, spec("restricted"), nodes, compute_nodes=compute)
        text = "\n".join(lines)
        assert "training plan:" in lines
        assert "  restricted data: rule restricted: " in text
        assert "  federated over 3 site(s):" in lines
        assert (
            "    site hospital-a: trains on ray:hospital-a (selector continuum.io/site=hospital-a)"
            in lines
        )
        assert (
            "  crosses a site's border: model updates, metrics, sample counts; never a sample"
            in (lines)
        )
        assert any(line.startswith("  decided by rule restricted.same_site") for line in lines)

    def test_check_passes_a_federated_pipeline_and_refuses_one_missing_a_site_node(self) -> None:
        decisions = check_pipeline(POLICY, spec("restricted"), three_hospitals())
        training = [d for d in decisions if d.stage == "training"]
        assert training[0].allowed and training[0].reason.startswith("federated retraining")
        nodes = three_hospitals()
        del nodes["ray:hospital-b"]
        nodes.pop("agent-hospital-b")
        nodes["agent-hospital-b"] = hospital("hospital-b")
        with pytest.raises(PlacementError, match="hospital-b"):
            check_pipeline(
                POLICY,
                spec("restricted"),
                nodes,
                compute_nodes=[n for n in nodes if n.startswith("ray:")],
            )
