"""The residency policy refuses a pipeline at deploy, and the audit log records it first.

Done-when of issue 6: confidential data of a tenant held to jurisdiction LU must not be
trained on a node labelled ``continuum.io/jurisdiction=DE``.  The nodes come from the real
fleet registry and the session's Ray cluster; nothing is started when the deploy is refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from cloud_head.audit import AuditAction, AuditLog, AuditTrail
from cloud_head.fleet import FleetRegistry
from cloud_head.services import CloudHead, HeadPaths, check_deploy
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.errors import PlacementError
from continuum.labels import JURISDICTION, SITE, TIER
from continuum.residency import ResidencyPolicy
from continuum.signing import generate_keypair
from continuum.spec import EdgeStageSpec, PipelineSpec, RetrainSpec, TensorSchema, UplinkSpec
from continuum.wire import topics
from continuum.wire.messages import NodeStatus
from continuum.wire.mqtt import BrokerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY = """
api_version: continuum.io/v1
kind: ResidencyPolicy
classes:
  public: {}
  internal: {}
  confidential: {}
  restricted: {same_site: true}
tenants:
  {tenant}:
    confidential:
      jurisdiction: [LU]
"""
STORE = {TIER: "cloud", JURISDICTION: "LU"}


def bank_spec(tenant: str, training_where: dict[str, str], site: str = "lux-1") -> PipelineSpec:
    return PipelineSpec(
        name="cheques",
        tenant=tenant,
        data_class="confidential",
        edge=EdgeStageSpec(
            model="reader",
            input=TensorSchema(shape=(1, 8, 8)),
            where={TIER: "edge", SITE: site, JURISDICTION: "LU"},
        ),
        uplink=UplinkSpec(policy=select.random(0.1)),
        retrain=RetrainSpec(
            trainer="pipelines.digits.train:train_loop_per_worker", where=training_where
        ),
    )


def enrol(paths: HeadPaths, tenant: str, nodes: dict[str, dict[str, str]]) -> None:
    """The nodes' retained status reaches the fleet registry, as from their agents."""
    with FleetRegistry(tenant, paths.fleet_db(tenant)) as fleet:
        for node, labels in nodes.items():
            status = NodeStatus(
                node=node,
                tenant=tenant,
                online=True,
                labels=labels,
                agent_version="test",
                pipelines=["cheques"],
                ts=0.0,
            )
            assert fleet.handle(topics.node_status(tenant, node), status.to_payload()).kind == (
                "status"
            )
        fleet.tick()


class TestRefusedAtDeploy:
    def test_training_on_a_de_node_is_refused_naming_the_rule_and_recorded_first(
        self, tmp_path: Path, ray_cluster: Any, mqtt_broker: EmbeddedBroker
    ) -> None:
        # The cheques are captured at lux-2, where no Ray node could train them either
        # (federated training would have kept them in LU: issue 17).
        tenant = f"bank-{uuid.uuid4().hex[:6]}"
        paths = HeadPaths(tmp_path / "cloud")
        enrol(
            paths,
            tenant,
            {
                "cam-lux-2": {TIER: "edge", SITE: "lux-2", JURISDICTION: "LU"},
                "mec-fra-1": {TIER: "edge", SITE: "fra-1", JURISDICTION: "DE"},
            },
        )
        policy_file = tmp_path / "residency.yaml"
        policy_file.write_text(POLICY.replace("{tenant}", tenant))
        private_key, public_key = generate_keypair()

        with pytest.raises(PlacementError) as refused:
            CloudHead.deploy(
                tenant,
                [bank_spec(tenant, {SITE: "fra-1"}, site="lux-2")],
                paths,
                BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
                private_key,
                code_version="test",
                policy=policy_file,
                store_labels=STORE,
                actor="dana@bank",
            )

        rule = f"tenants.{tenant}.confidential.jurisdiction"
        assert rule in str(refused.value)
        assert f"{JURISDICTION}=DE" in str(refused.value)
        assert "mec-fra-1" in str(refused.value)
        assert f"join a node labelled {SITE}=lux-2" in str(refused.value)
        assert refused.value.rule == rule
        assert refused.value.label == f"{JURISDICTION}=DE"
        with AuditLog(paths.audit) as log:
            (record,) = log.records(tenant)
            check = log.verify(tenant, public_key_pem=public_key)
        assert record.action == AuditAction.POLICY_REFUSAL
        assert record.actor == "dana@bank"
        assert record.subject == "cheques"
        assert record.details["refused"]["rule"] == rule
        assert record.details["refused"]["label"] == f"{JURISDICTION}=DE"
        assert record.details["refused"]["stage"] == "training"
        assert len(record.details["spec_digest"]) == 64
        assert check.ok and check.signature_checked, check.reason
        with pytest.raises(ValueError):
            ray.get_actor("fleet", namespace=tenant)  # nothing was started

    def test_the_allowed_training_selector_is_narrowed_by_the_policy_and_recorded(
        self, tmp_path: Path
    ) -> None:
        tenant = f"bank-{uuid.uuid4().hex[:6]}"
        paths = HeadPaths(tmp_path / "cloud")
        enrol(
            paths,
            tenant,
            {
                "cam-lux-1": {TIER: "edge", SITE: "lux-1", JURISDICTION: "LU"},
                "gpu-lux-1": {TIER: "cloud", SITE: "lux-dc", JURISDICTION: "LU"},
            },
        )
        policy = ResidencyPolicy.from_yaml(POLICY.replace("{tenant}", tenant))
        spec = bank_spec(tenant, {TIER: "cloud"})

        with AuditLog(paths.audit) as log:
            selectors = check_deploy(
                AuditTrail(log, tenant, "dana@bank"),
                [spec],
                policy,
                _fleet_nodes(paths, tenant),  # not the Ray head: it has no jurisdiction label
                store_labels=STORE,
            )
            (record,) = log.records(tenant)

        assert selectors == {"cheques": {TIER: "cloud", JURISDICTION: "LU"}}
        assert record.action == AuditAction.DEPLOY
        assert record.details["placement"]["training"] == {TIER: "cloud", JURISDICTION: "LU"}
        stages = [d["stage"] for d in record.details["decisions"]]
        assert {"edge", "store", "training", "rollout"} <= set(stages)
        assert all(d["allowed"] for d in record.details["decisions"])


def _fleet_nodes(paths: HeadPaths, tenant: str) -> dict[str, dict[str, str]]:
    with FleetRegistry(tenant, paths.fleet_db(tenant)) as fleet:
        return {n.node: n.labels for n in fleet.nodes()}
