"""Node enrolment and revocation in the tenant registry: records, password entries, ACL blocks.

Uses the real ``mosquitto_passwd`` (no broker); what a broker then grants each identity is
``tests/integration/cloud_head/test_node_identities.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_head._tenant_broker import acl_blocks, password_matches
from cloud_head.audit import AuditLog
from cloud_head.tenants import NodeRecord, QuotaExceededError, Quotas, TenantRegistry
from continuum.errors import ConfigError, NotFoundError, SpecError
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def _mosquitto_passwd() -> None:
    """The tenant registry hashes passwords with mosquitto's own tool."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")


@pytest.fixture
def registry(tmp_path: Path) -> TenantRegistry:
    made = TenantRegistry(tmp_path / "tenants")
    made.create("acme", Quotas(edge_nodes=2))
    made.create("globex")
    return made


def _hashes(registry: TenantRegistry) -> dict[str, str]:
    return dict(line.split(":", 1) for line in registry.password_file.read_text().split())


def _blocks(registry: TenantRegistry) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    user = None
    for line in registry.acl_file.read_text().splitlines():
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            blocks[user] = []
        elif line.startswith("topic ") and user is not None:
            blocks[user].append(line)
    return blocks


class TestAclOfANode:
    def test_a_node_writes_only_its_own_topics_and_reads_its_own_control_topics(self) -> None:
        blocks = acl_blocks("acme", ["cam-1"])
        assert blocks["edge.cam-1@acme"] == [
            "topic write ctm/acme/nodes/cam-1/status",
            "topic write ctm/acme/nodes/cam-1/reported",
            "topic write ctm/acme/pipelines/+/samples/cam-1",
            "topic write ctm/acme/pipelines/+/telemetry/cam-1",
            "topic write ctm/acme/pipelines/+/feedback/cam-1",
            "topic read ctm/acme/nodes/cam-1/desired",
            "topic read ctm/acme/nodes/cam-1/stored",
            "topic read ctm/acme/models/#",
        ]

    def test_only_cloud_roles_write_desired_state_receipts_and_artifacts(self) -> None:
        blocks = acl_blocks("acme", ["cam-1", "cam-2"])
        for kind in ("desired", "stored"):
            writers = {
                user
                for user, rules in blocks.items()
                for rule in rules
                if rule.startswith(("topic write", "topic readwrite")) and f"/{kind}" in rule
            }
            assert writers and all(not u.startswith("edge.") and "@" in u for u in writers)
        artifact_writers = {
            u for u, rules in blocks.items() if "topic write ctm/acme/models/#" in rules
        }
        assert artifact_writers == {"control@acme"}

    def test_only_ingest_identities_read_samples_and_feedback(self) -> None:
        blocks = acl_blocks("acme", ["cam-1"])
        readers = {
            user
            for user, rules in blocks.items()
            for rule in rules
            if rule.startswith("topic read ctm/acme/pipelines/+/samples")
        }
        assert readers == {f"ingest.{i}@acme" for i in range(8)}


class TestEnroll:
    def test_password_node_gets_its_identity_a_hash_and_an_acl_block(
        self, registry: TenantRegistry
    ) -> None:
        credentials = registry.enroll_node("acme", "cam-1")
        assert credentials.username == "edge.cam-1@acme"
        assert credentials.method == "password"
        assert credentials.password is not None and len(credentials.password) >= 40
        assert credentials.password not in repr(credentials)
        assert password_matches(_hashes(registry)["edge.cam-1@acme"], credentials.password)
        assert "topic write ctm/acme/nodes/cam-1/status" in _blocks(registry)["edge.cam-1@acme"]
        for path in registry.root.rglob("*"):  # handed out once: kept nowhere
            if path.is_file():
                assert credentials.password.encode() not in path.read_bytes(), path

    def test_certificate_node_gets_an_acl_block_and_no_password(
        self, registry: TenantRegistry
    ) -> None:
        credentials = registry.enroll_node(
            "acme", "cam-1", method="certificate", cert_serial="0A1B", not_after=2e9
        )
        assert (credentials.username, credentials.password) == ("edge.cam-1@acme", None)
        assert "edge.cam-1@acme" not in _hashes(registry)
        assert "edge.cam-1@acme" in _blocks(registry)
        (record,) = registry.nodes("acme")
        assert (record.method, record.cert_serial, record.not_after) == ("certificate", "0a1b", 2e9)
        assert record.identity == "edge.cam-1@acme" and record.active

    def test_enrolled_node_is_refused_naming_revoke_and_replace(
        self, registry: TenantRegistry
    ) -> None:
        first = registry.enroll_node("acme", "cam-1")
        refused = r"already enrolled.*node revoke acme cam-1.*--replace"
        with pytest.raises(ConfigError, match=refused):
            registry.enroll_node("acme", "cam-1")
        assert first.password is not None
        assert password_matches(_hashes(registry)["edge.cam-1@acme"], first.password)

    def test_replace_revokes_the_old_credential_and_keeps_its_record(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-1", method="certificate", cert_serial="01", not_after=2e9)
        again = registry.enroll_node(
            "acme", "cam-1", method="certificate", cert_serial="02", not_after=3e9, replace=True
        )
        assert again.username == "edge.cam-1@acme"
        old, new = registry.nodes("acme")
        assert (old.cert_serial, old.active) == ("01", False)
        assert (new.cert_serial, new.active) == ("02", True)
        assert registry.revoked_serials() == ["01"]

    def test_quota_counts_enrolled_nodes_and_replacing_one_does_not(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-1")
        registry.enroll_node("acme", "cam-2")
        with pytest.raises(QuotaExceededError, match="edge_nodes quota: limit 2, current 2"):
            registry.enroll_node("acme", "cam-3")
        registry.enroll_node("acme", "cam-2", replace=True)
        registry.revoke_node("acme", "cam-1")
        registry.enroll_node("acme", "cam-3")
        assert [n.node for n in registry.nodes("acme") if n.active] == ["cam-2", "cam-3"]

    @pytest.mark.parametrize(
        ("node", "kwargs", "field"),
        [
            ("Cam/1", {}, "node"),
            ("cam-1", {"method": "token"}, "method"),
            ("cam-1", {"method": "certificate", "not_after": 2e9}, "cert_serial"),
            ("cam-1", {"method": "certificate", "cert_serial": "01"}, "not_after"),
            ("cam-1", {"cert_serial": "01"}, "method"),
        ],
    )
    def test_bad_input_is_refused_before_anything_is_written(
        self, registry: TenantRegistry, node: str, kwargs: dict[str, object], field: str
    ) -> None:
        before = registry.password_file.read_text(), registry.acl_file.read_text()
        with pytest.raises(SpecError) as caught:
            registry.enroll_node("acme", node, **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field
        assert (registry.password_file.read_text(), registry.acl_file.read_text()) == before
        assert registry.nodes("acme") == []

    def test_unknown_tenant_is_not_found(self, registry: TenantRegistry) -> None:
        with pytest.raises(NotFoundError, match="known tenants: acme, globex"):
            registry.enroll_node("initech", "cam-1")


class TestRevoke:
    def test_revoke_removes_the_password_and_the_acl_block_and_keeps_the_record(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-1")
        registry.enroll_node("acme", "cam-2")
        registry.revoke_node("acme", "cam-1")
        assert "edge.cam-1@acme" not in _hashes(registry)
        assert "edge.cam-1@acme" not in _blocks(registry)
        assert "edge.cam-2@acme" in _blocks(registry)
        revoked, kept = registry.nodes("acme")
        assert (revoked.node, revoked.active, kept.node, kept.active) == (
            "cam-1",
            False,
            "cam-2",
            True,
        )
        assert revoked.revoked_at is not None and revoked.revoked_at >= revoked.enrolled_at

    def test_revoked_certificates_are_listed_for_the_crl(self, registry: TenantRegistry) -> None:
        for tenant, serial in (("acme", "AA"), ("globex", "BB")):
            registry.enroll_node(
                tenant, "cam-1", method="certificate", cert_serial=serial, not_after=2e9
            )
        assert registry.revoked_serials() == []
        registry.revoke_node("acme", "cam-1")
        assert registry.revoked_serials() == ["aa"]

    def test_revoking_a_node_that_is_not_enrolled_names_the_enrolled_ones(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-2")
        with pytest.raises(NotFoundError, match=r"enrolled nodes: cam-2"):
            registry.revoke_node("acme", "cam-1")

    def test_deleting_the_tenant_revokes_its_nodes(self, registry: TenantRegistry) -> None:
        registry.enroll_node(
            "globex", "cam-1", method="certificate", cert_serial="CC", not_after=2e9
        )
        registry.enroll_node("globex", "cam-2")
        registry.delete("globex")
        assert not any(u.endswith("@globex") for u in _hashes(registry))
        assert not any(u.endswith("@globex") for u in _blocks(registry))
        gone = [n for n in registry.nodes() if n.tenant == "globex"]
        assert len(gone) == 2 and not any(n.active for n in gone)
        assert registry.revoked_serials() == ["cc"]


class TestApplyToBroker:
    def test_enrolled_password_nodes_are_expected_and_revoked_ones_removed(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-1")
        registry.enroll_node("acme", "cam-2")
        registry.apply_to_broker()
        assert {"edge.cam-1@acme", "edge.cam-2@acme"} <= set(_hashes(registry))

    def test_a_lost_node_entry_names_re_enrolment_as_the_fix(
        self, registry: TenantRegistry
    ) -> None:
        registry.enroll_node("acme", "cam-1")
        hashes = _hashes(registry)
        del hashes["edge.cam-1@acme"]
        registry.password_file.write_text("".join(f"{u}:{h}\n" for u, h in hashes.items()))
        fix = r"edge\.cam-1@acme.*node enroll acme cam-1 --replace"
        with pytest.raises(ConfigError, match=fix):
            registry.apply_to_broker()


class TestAudit:
    def test_enrolment_and_revocation_are_recorded_in_the_tenants_log(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path / "audit") as audit:
            registry = TenantRegistry(tmp_path / "tenants", audit=audit, actor="ops@host")
            registry.create("acme")
            registry.enroll_node("acme", "cam-1")
            registry.revoke_node("acme", "cam-1")
            records = audit.records("acme")
        events = [(r.action, r.details.get("event")) for r in records]
        assert events[-2:] == [("key_change", "node enrolled"), ("key_change", "node revoked")]
        enrolled = records[-2].details
        assert (enrolled["node"], enrolled["identity"], enrolled["method"]) == (
            "cam-1",
            "edge.cam-1@acme",
            "password",
        )
        assert records[-1].actor == "ops@host"

    def test_a_change_that_cannot_be_recorded_is_not_made(self, tmp_path: Path) -> None:
        class Broken(AuditLog):
            def append(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
                raise OSError("disk full")

        TenantRegistry(tmp_path / "tenants").create("acme")
        with Broken(tmp_path / "audit") as audit:
            registry = TenantRegistry(tmp_path / "tenants", audit=audit)
            with pytest.raises(OSError, match="disk full"):
                registry.enroll_node("acme", "cam-1")
        assert registry.nodes("acme") == []
        assert "edge.cam-1@acme" not in _hashes(registry)
        assert "edge.cam-1@acme" not in _blocks(registry)


def test_node_record_names_its_identity() -> None:
    record = NodeRecord(tenant="acme", node="cam-1", method="password", enrolled_at=1.0)
    assert record.identity == "edge.cam-1@acme" and record.active
