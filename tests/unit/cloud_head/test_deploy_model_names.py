"""A model name is unique per tenant (issue 14, finding 9): a deploy whose pipelines share one
is refused, naming both pipelines and the fix, before anything is recorded or started.

Artifact topics and signatures name the tenant and the model, not the pipeline; two
pipelines sharing a model name would take each other's versions as validly signed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cloud_head._deploy_check import registered_models
from cloud_head.audit import AuditAction, AuditLog, AuditTrail
from cloud_head.services import CloudHead, HeadPaths, check_deploy
from continuum import Pipeline, select
from continuum.errors import SpecError
from continuum.signing import generate_keypair
from continuum.spec import PipelineSpec
from continuum.wire.mqtt import BrokerSettings
from tests.tools import register_test_version


def spec(name: str, model: str, tenant: str = "clinic") -> PipelineSpec:
    pipe = Pipeline(name, tenant=tenant, data_class="internal")
    pipe.edge(model=model, backend="onnxruntime", shape=(1, 8, 8))
    pipe.uplink(select.random(0.1))
    return pipe.spec


def register_version(paths: HeadPaths, tenant: str, pipeline: str, model: str) -> None:
    """Record a version of ``model`` for ``pipeline`` in the real registry under ``paths``."""
    artifact = paths.root / f"{pipeline}.onnx"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"not a model; the registry only copies and hashes it")
    registry = paths.open_registry()
    try:
        register_test_version(registry, tenant, pipeline, model, artifact)
    finally:
        registry.close()


def audit_records(root: Path, tenant: str) -> list[str]:
    with AuditLog(root) as log:
        if not (root / tenant).exists():
            return []
        return [r.action for r in log.records(tenant)]


class TestModelNamesAreUniquePerTenant:
    def test_two_pipelines_naming_one_model_are_refused_with_both_names_and_the_fix(
        self, tmp_path: Path
    ) -> None:
        specs = [spec("lab-forms", "digits-cnn"), spec("intake-forms", "digits-cnn")]
        with AuditLog(tmp_path / "audit") as log, pytest.raises(SpecError) as refused:
            check_deploy(AuditTrail(log, "clinic", "dana@clinic"), specs, None, None)
        message = str(refused.value)
        assert "'lab-forms', 'intake-forms'" in message
        assert "model 'digits-cnn'" in message and "tenant 'clinic'" in message
        assert "fix: rename the model of all but one pipeline" in message
        assert "unique per tenant" in message
        assert refused.value.field == "edge.model"
        assert audit_records(tmp_path / "audit", "clinic") == []  # refused before any record

    def test_every_shared_name_is_named_at_once(self, tmp_path: Path) -> None:
        specs = [
            spec("a", "reader"),
            spec("b", "reader"),
            spec("c", "scorer"),
            spec("d", "scorer"),
            spec("e", "sorter"),
        ]
        with AuditLog(tmp_path / "audit") as log, pytest.raises(SpecError) as refused:
            check_deploy(AuditTrail(log, "clinic", "dana@clinic"), specs, None, None)
        message = str(refused.value)
        assert "'a', 'b' of tenant 'clinic' all name model 'reader'" in message
        assert "'c', 'd' of tenant 'clinic' all name model 'scorer'" in message
        assert "sorter" not in message

    def test_distinct_model_names_deploy_and_one_name_in_two_tenants_is_fine(
        self, tmp_path: Path
    ) -> None:
        with AuditLog(tmp_path / "audit") as log:
            selectors = check_deploy(
                AuditTrail(log, "clinic", "dana@clinic"),
                [spec("lab-forms", "digits-cnn"), spec("intake-forms", "intake-cnn")],
                None,
                None,
            )
            # Another tenant's model of the same name has its own topics and key.
            check_deploy(
                AuditTrail(log, "bank", "eve@bank"),
                [spec("cheques", "digits-cnn", tenant="bank")],
                None,
                None,
            )
        assert selectors == {"lab-forms": None, "intake-forms": None}
        assert audit_records(tmp_path / "audit", "clinic") == [AuditAction.DEPLOY] * 2

    def test_cloud_head_deploy_refuses_before_recording_or_starting_anything(
        self, tmp_path: Path
    ) -> None:
        tenant = f"clinic-{uuid.uuid4().hex[:6]}"
        paths = HeadPaths(tmp_path / "cloud", registry_url=None)
        private, _ = generate_keypair()
        with pytest.raises(SpecError, match="'lab-forms', 'intake-forms'"):
            CloudHead.deploy(
                tenant,
                [
                    spec("lab-forms", "digits-cnn", tenant),
                    spec("intake-forms", "digits-cnn", tenant),
                ],
                paths,
                BrokerSettings(host="127.0.0.1", port=1),  # never reached: refused first
                private,
                code_version="test",
            )
        assert audit_records(paths.audit, tenant) == []


class TestAgainstTheRegistry:
    """A pipeline removed or renamed leaves its versions in the registry under its model name;
    a new pipeline naming that model would take them as its own."""

    def test_a_model_the_registry_holds_for_another_pipeline_is_refused(
        self, tmp_path: Path
    ) -> None:
        paths = HeadPaths(tmp_path / "cloud", registry_url=None)
        register_version(paths, "clinic", "lab-forms", "digits-cnn")
        assert registered_models("clinic", paths) == {"digits-cnn": "lab-forms"}
        with AuditLog(paths.audit) as log, pytest.raises(SpecError) as refused:
            check_deploy(
                AuditTrail(log, "clinic", "dana@clinic"),
                [spec("intake-forms", "digits-cnn")],
                None,
                None,
                registered=registered_models("clinic", paths),
            )
        message = str(refused.value)
        assert "'lab-forms', 'intake-forms' of tenant 'clinic' all name model 'digits-cnn'" in (
            message
        )
        assert "the model registry holds versions of it for 'lab-forms'" in message
        assert "pipeline 'intake-forms'" in message  # the fix names the one to rename
        assert audit_records(paths.audit, "clinic") == []

    def test_the_pipeline_the_registry_holds_it_for_deploys_again(self, tmp_path: Path) -> None:
        paths = HeadPaths(tmp_path / "cloud", registry_url=None)
        register_version(paths, "clinic", "lab-forms", "digits-cnn")
        register_version(paths, "bank", "cheques", "reader")  # another tenant's: not read
        with AuditLog(paths.audit) as log:
            check_deploy(
                AuditTrail(log, "clinic", "dana@clinic"),
                [spec("lab-forms", "digits-cnn"), spec("cheques", "reader")],
                None,
                None,
                registered=registered_models("clinic", paths),
            )
        assert audit_records(paths.audit, "clinic") == [AuditAction.DEPLOY] * 2

    def test_cloud_head_deploy_reads_the_registry(self, tmp_path: Path) -> None:
        tenant = f"clinic-{uuid.uuid4().hex[:6]}"
        paths = HeadPaths(tmp_path / "cloud", registry_url=None)
        register_version(paths, tenant, "lab-forms", "digits-cnn")
        private, _ = generate_keypair()
        with pytest.raises(SpecError, match="registry holds versions of it for 'lab-forms'"):
            CloudHead.deploy(
                tenant,
                [spec("intake-forms", "digits-cnn", tenant)],
                paths,
                BrokerSettings(host="127.0.0.1", port=1),  # never reached: refused first
                private,
                code_version="test",
            )
        assert audit_records(paths.audit, tenant) == []
