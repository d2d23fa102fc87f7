"""Deploy follows the policy's training plan: a restricted pipeline of three hospitals, each
with a Ray node on site, deploys with federated retraining recorded in the audit log; one
hospital without such a node is refused, the refusal recorded, naming the node to join."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_head._deploy_check import check_deploy, check_deploy_plans
from cloud_head.audit import AuditAction, AuditLog, AuditTrail
from continuum.errors import PlacementError
from continuum.labels import JURISDICTION, SITE, TIER
from continuum.residency import ResidencyPolicy
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
SITES = ("hospital-a", "hospital-b", "hospital-c")


def spec() -> PipelineSpec:
    data: dict[str, Any] = {
        "name": "tumour-risk",
        "tenant": "medica",
        "data_class": "restricted",
        "edge": {
            "model": "risk-mlp",
            "input": {"shape": [30]},
            "where": {TIER: "edge", SITE: "hospital-*"},
        },
        "uplink": {"policy": {"kind": "random", "rate": 0.1}},
        "retrain": {"trainer": "pkg.mod:train", "where": {TIER: "cloud"}},
    }
    return PipelineSpec.from_dict(data)


def nodes(*, servers: tuple[str, ...] = SITES) -> dict[str, dict[str, str]]:
    """The fleet's agents by name, the Ray nodes as ``known_nodes`` names them (``ray:``)."""
    found = {"ray:0123456789ab": {TIER: "cloud", SITE: "fra-dc", JURISDICTION: "DE"}}
    for site in SITES:
        found[f"agent-{site}"] = {TIER: "edge", SITE: site, JURISDICTION: "LU"}
    for index, site in enumerate(servers):
        found[f"ray:site{index:07d}"] = {TIER: "edge", SITE: site, JURISDICTION: "LU"}
    return found


class TestDeployPlansFederatedRetraining:
    def test_the_plan_is_returned_and_recorded_with_the_deploy(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path / "audit") as log:
            trail = AuditTrail(log, "medica", "dana@medica")
            plans = check_deploy_plans(trail, [spec()], POLICY, nodes())
            (record,) = log.records("medica", action=AuditAction.DEPLOY)
        plan = plans["tumour-risk"]
        assert plan is not None and plan.mode == "federated"
        assert plan.sites["hospital-b"] == ("ray:site0000001",)  # the agent cannot train
        recorded = record.details["training_plan"]
        assert recorded["mode"] == "federated"
        assert recorded["crosses"] == ["model updates", "metrics", "sample counts"]
        assert record.details["placement"]["training"]["hospital-c"] == {SITE: "hospital-c"}
        training = [d for d in record.details["decisions"] if d["stage"] == "training"]
        assert [d["allowed"] for d in training] == [True]
        assert training[0]["reason"].startswith("federated retraining")

    def test_the_central_selector_api_gives_no_selector_to_a_federated_pipeline(
        self, tmp_path: Path
    ) -> None:
        with AuditLog(tmp_path / "audit") as log:
            selectors = check_deploy(AuditTrail(log, "medica", "dana"), [spec()], POLICY, nodes())
        assert selectors == {"tumour-risk": None}

    def test_a_site_with_no_node_that_may_train_is_refused_and_recorded(
        self, tmp_path: Path
    ) -> None:
        with AuditLog(tmp_path / "audit") as log:
            trail = AuditTrail(log, "medica", "dana@medica")
            with pytest.raises(PlacementError) as refused:
                check_deploy_plans(trail, [spec()], POLICY, nodes(servers=SITES[:2]))
            (record,) = log.records("medica", action=AuditAction.POLICY_REFUSAL)
            assert not log.records("medica", action=AuditAction.DEPLOY)
        assert refused.value.rule == "restricted.same_site"
        assert f"join a node labelled {SITE}=hospital-c to the Ray cluster" in str(refused.value)
        assert record.details["refused"]["stage"] == "training"
