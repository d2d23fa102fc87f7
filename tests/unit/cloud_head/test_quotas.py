"""Quotas enforced by the running cloud head, and tenant changes written to the audit log.

The ``edge_nodes`` quota is read from a real tenant registry (``read_quotas``) by the fleet
registry when a node first reports; the rollout controller gives a refused node no desired
state.  Tenant changes are recorded in the tenant's own audit log, and a change that cannot
be recorded is not made.  (The ``training_gpu_hours`` quota is enforced by the controller:
``tests/integration/cloud_head/test_audit_trail.py``.)
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.audit import AuditAction, AuditLog, AuditWriteError
from cloud_head.cli import audit as audit_cli
from cloud_head.cli import fleet as fleet_cli
from cloud_head.cli import tenant as tenant_cli
from cloud_head.fleet import FleetRegistry
from cloud_head.registry import ModelRegistry
from cloud_head.rollout import DesiredStateBook, RolloutController
from cloud_head.tenants import Quotas, TenantRegistry, read_quotas
from continuum import select
from continuum.labels import SITE, TIER
from continuum.signing import generate_keypair, sign_artifact
from continuum.spec import EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import topics
from continuum.wire.messages import DesiredState, NodeStatus

TENANT = "acme"
PIPELINE = "digits"


def status(node: str, *, online: bool = True) -> bytes:
    return NodeStatus(
        node=node,
        tenant=TENANT,
        online=online,
        labels={TIER: "edge", SITE: "lux-1"},
        agent_version="0.1.0",
        pipelines=[PIPELINE],
        ts=900.0,
    ).to_payload()


def join(fleet: FleetRegistry, node: str, *, online: bool = True) -> str:
    """Send the node's retained status; return the refusal reason ('' when admitted)."""
    return fleet.handle(topics.node_status(TENANT, node), status(node, online=online)).reason


def break_audit_storage(audit_root: Path, tenant: str) -> None:
    """Make every further append to the tenant's log fail in SQLite, as a full disk would."""
    with sqlite3.connect(audit_root / tenant / "audit.sqlite3") as db:
        db.execute(
            "CREATE TRIGGER test_disk_full BEFORE INSERT ON records "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END"
        )


@pytest.fixture
def tenants(tmp_path: Path) -> TenantRegistry:
    registry = TenantRegistry(tmp_path / "cloud" / "tenants")
    credentials = registry.create(TENANT, Quotas(edge_nodes=2)).credentials
    assert credentials is not None
    (tmp_path / "password").write_text(credentials.password)
    return registry


@pytest.fixture
def fleet(tmp_path: Path, tenants: TenantRegistry) -> Iterator[FleetRegistry]:
    quotas = functools.partial(read_quotas, tenants.root, TENANT)
    path = tmp_path / "cloud" / "state" / f"fleet-{TENANT}.sqlite3"
    with FleetRegistry(TENANT, path, quotas=quotas) as registry:
        yield registry


class TestEdgeNodeQuota:
    def test_a_node_beyond_the_quota_is_refused_named_and_counted(
        self, fleet: FleetRegistry
    ) -> None:
        assert join(fleet, "cam-1") == ""
        assert join(fleet, "cam-2") == ""
        assert join(fleet, "cam-3") == "over_quota"

        refused = {n.node: n.refused for n in fleet.nodes()}
        assert refused["cam-1"] is None and refused["cam-2"] is None
        assert refused["cam-3"] is not None
        assert "edge_nodes quota" in refused["cam-3"]
        assert f"continuum tenant quota {TENANT} --edge-nodes 3" in refused["cam-3"]
        stats = fleet.stats()
        assert stats["refused_nodes"] == 1
        assert stats["refusals"] == 1
        assert stats["nodes"] == 3  # known, and shown, but not served

    def test_a_refused_node_gets_no_desired_state(
        self, fleet: FleetRegistry, tmp_path: Path
    ) -> None:
        for node in ("cam-1", "cam-2", "cam-3"):
            join(fleet, node)
        published: list[DesiredState] = []
        private_key, _ = generate_keypair()
        book = DesiredStateBook(
            tmp_path / "desired.sqlite3",
            TENANT,
            lambda topic, payload: published.append(DesiredState.from_payload(payload)),
            private_key_pem=private_key,
        )
        registry = ModelRegistry(tmp_path / "registry")
        artifact = tmp_path / "model.onnx"
        artifact.write_bytes(b"weights" * 100)
        v1 = registry.register(
            TENANT,
            PIPELINE,
            "inspector",
            artifact,
            sign=lambda m, v, d: sign_artifact(private_key, m, v, d),
            parent=None,
            code_version="test",
            metrics={},
            gate={},
            lineage={},
        )
        spec = PipelineSpec(
            name=PIPELINE,
            tenant=TENANT,
            data_class="internal",
            edge=EdgeStageSpec(
                model="inspector", input=TensorSchema(shape=(1, 8, 8)), where={TIER: "edge"}
            ),
            uplink=UplinkSpec(policy=select.random(0.1)),
        )
        rollout = RolloutController(spec, registry, fleet, book, chunk_size=1024)
        try:
            assert rollout.eligible_nodes() == ["cam-1", "cam-2"]
            state = rollout.begin(v1)
            assert state.stage == "promoted"
            assert sorted(s.node for s in published) == ["cam-1", "cam-2"]
            assert book.get("cam-3") is None
        finally:
            book.close()
            registry.close()

    def test_raising_the_quota_admits_the_refused_node_at_its_next_status(
        self, fleet: FleetRegistry, tenants: TenantRegistry
    ) -> None:
        for node in ("cam-1", "cam-2", "cam-3"):
            join(fleet, node)
        tenants.set_quotas(TENANT, Quotas(edge_nodes=3))

        assert join(fleet, "cam-3") == ""
        assert all(n.refused is None for n in fleet.nodes())

    def test_an_admitted_node_that_goes_offline_keeps_its_place(self, fleet: FleetRegistry) -> None:
        join(fleet, "cam-1")
        join(fleet, "cam-2")
        join(fleet, "cam-1", online=False)  # its last will

        assert join(fleet, "cam-3") == "over_quota"
        assert join(fleet, "cam-1") == ""  # back online, still admitted

    def test_a_removed_node_frees_its_place(self, fleet: FleetRegistry) -> None:
        join(fleet, "cam-1")
        join(fleet, "cam-2")
        assert join(fleet, "cam-3") == "over_quota"
        fleet.remove("cam-1")  # `continuum fleet remove cam-1`

        assert join(fleet, "cam-3") == ""

    def test_an_empty_status_does_not_free_a_place(self, fleet: FleetRegistry) -> None:
        join(fleet, "cam-1")
        join(fleet, "cam-2")
        fleet.handle(topics.node_status(TENANT, "cam-1"), b"")  # cleared, by anyone

        assert join(fleet, "cam-3") == "over_quota"

    def test_without_a_tenant_registry_the_fleet_is_unlimited(self, tmp_path: Path) -> None:
        with FleetRegistry(TENANT, tmp_path / "fleet.sqlite3") as fleet:
            for i in range(25):
                assert join(fleet, f"cam-{i}") == ""
            assert fleet.stats()["refused_nodes"] == 0

    def test_fleet_command_shows_the_refusal(
        self, fleet: FleetRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for node in ("cam-1", "cam-2", "cam-3"):
            join(fleet, node)
        fleet.tick()  # the running registry flushes to SQLite on its timer

        args = argparse.Namespace(
            tenant=TENANT, root=tmp_path / "cloud", where=[], password_file=tmp_path / "password"
        )
        assert fleet_cli.run(args) == 0

        out = capsys.readouterr().out
        (line,) = [x for x in out.splitlines() if "REFUSED" in x]
        assert "edge_nodes quota" in line
        assert out.index("cam-3") < out.index("REFUSED")


class TestTenantChangesAreAudited:
    def test_create_quota_rotate_and_delete_are_recorded_and_verify(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path / "audit") as log:
            registry = TenantRegistry(tmp_path / "tenants", audit=log, actor="ops@host")
            registry.create(TENANT)
            registry.set_quotas(TENANT, Quotas(edge_nodes=3))
            registry.rotate_credentials(TENANT)
            registry.delete(TENANT)

            records = log.records(TENANT)
            assert log.verify(TENANT).ok
        assert [(r.action, r.details["event"]) for r in records] == [
            (AuditAction.TENANT_CHANGE, "created"),
            (AuditAction.TENANT_CHANGE, "quota"),
            (AuditAction.KEY_CHANGE, "credentials rotated"),
            (AuditAction.TENANT_CHANGE, "deleted"),
        ]
        assert {r.actor for r in records} == {"ops@host"}
        assert {r.subject for r in records} == {f"tenant/{TENANT}"}
        assert records[1].details["before"]["edge_nodes"] == 10
        assert records[1].details["after"]["edge_nodes"] == 3

    def test_a_quota_change_that_cannot_be_recorded_is_not_made(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path / "audit") as log:
            registry = TenantRegistry(tmp_path / "tenants", audit=log)
            registry.create(TENANT, Quotas(edge_nodes=2))
            break_audit_storage(tmp_path / "audit", TENANT)

            with pytest.raises(AuditWriteError, match="not carried out"):
                registry.set_quotas(TENANT, Quotas(edge_nodes=50))

            assert registry.get(TENANT).quotas.edge_nodes == 2
            assert len(log.records(TENANT)) == 1

    def test_tenant_command_records_where_audit_verify_reads(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = tmp_path / "cloud"
        create = argparse.Namespace(
            name=TENANT,
            root=root,
            edge_nodes=None,
            samples_per_day=None,
            training_gpu_hours=5.0,
            broker_pid=None,
            broker_pid_file=None,
        )
        assert tenant_cli.run_create(create) == 0
        printed = capsys.readouterr().out
        (line,) = [x for x in printed.splitlines() if x.strip().startswith("tenant ")]
        (tmp_path / "password").write_text(line.split("password", 1)[1].strip())

        verify = argparse.Namespace(
            tenant=TENANT, root=root, public_key=None, password_file=tmp_path / "password"
        )
        assert audit_cli.run_verify(verify) == 0
        assert "OK, 1 records intact" in capsys.readouterr().out
