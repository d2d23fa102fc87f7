"""The demo's second tenant, its residency policy and the evidence the report shows for both.

``continuum demo`` runs two organisations side by side on one broker, one Ray cluster and
one store: the factory ``acme`` (the digits inspection loop) and the hospital lab
``medica`` (``pipelines/lab_forms.py``, whose frames carry a patient id and a technician's
name). The central pool and the store are in Frankfurt, the edge sites in Luxembourg, and
``pipelines/residency.yaml`` decides what may go where. This module sets that world up and,
at the end, collects what shows the rules held: the deploy decisions and the refusal from
the audit log, each agent's uplink plan, what the lab's store files hold, whether one
tenant's credentials could reach the other's topics, and whether each audit log verifies.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER

if TYPE_CHECKING:
    from collections.abc import Mapping

    from continuum.spec import PipelineSpec

FIRST_TENANT = "acme"
SECOND_TENANT = "medica"
#: Both tenants of the demo, the factory first.
TENANTS = [FIRST_TENANT, SECOND_TENANT]
SECOND_PIPELINE_MODULE = "pipelines.lab_forms"
#: The lab's frames: the patient id is restricted, the technician confidential.
LAB_FIELDS = {"patient_id": "P-{seed:02d}{n:06d}", "technician": "tech-{seed:02d}"}

#: Where the central pool and the store are: Frankfurt.
CLOUD_LABELS = {TIER: "cloud", SITE: "fra-1", COUNTRY: "DE", JURISDICTION: "DE"}
STORE_LABELS = dict(CLOUD_LABELS)
#: The Ray worker that stands for the edge tier: a Luxembourg site.
EDGE_NODE_LABELS = {TIER: "edge", SITE: "lux-1", COUNTRY: "LU", JURISDICTION: "LU"}


def policy_path() -> Path:
    """Return the demo's residency policy, shipped with the example pipelines."""
    import pipelines

    return Path(pipelines.__file__).resolve().parent / "residency.yaml"


@dataclass
class Tenancy:
    """Who is who on the demo's broker, and the policy they live under.

    ``credentials`` maps a tenant to its MQTT (username, password); empty on an anonymous
    broker (the tests' shared one), where isolation cannot be shown and is reported so.
    """

    policy: Path
    store_labels: dict[str, str]
    salts: dict[str, Path]
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)
    signing_keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def broker_for(self, tenant: str, broker: Any) -> Any:
        """Return ``broker`` settings with ``tenant``'s credentials, when there are any."""
        if tenant not in self.credentials:
            return broker
        user, password = self.credentials[tenant]
        return broker.model_copy(update={"username": user, "password": password})


def credentials_dir(workdir: Path) -> Path:
    """Where the demo keeps each tenant's password for the operator commands."""
    return workdir / "credentials"


def write_salts(directory: Path, tenants: list[str]) -> dict[str, Path]:
    """Write a random field-hashing salt per tenant (mode 0600); return the files."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for tenant in tenants:
        path = directory / f"{tenant}.salt"
        path.touch(mode=0o600)
        path.write_bytes(secrets.token_bytes(32))
        out[tenant] = path
    return out


def create_tenants(workdir: Path, tenants: list[str]) -> tuple[Any, Tenancy]:
    """Create the tenants in a registry under ``workdir/tenants``; return it and the tenancy.

    The registry writes mosquitto's password and ACL files: start the broker on them. Each
    tenant's password, which the registry hands out once, goes to
    ``workdir/../credentials/<tenant>.password`` (mode 0600) for the operator commands.
    """
    from cloud_head.tenants import TenantRegistry

    registry = TenantRegistry(workdir / "tenants")
    tenancy = Tenancy(
        policy=policy_path(),
        store_labels=dict(STORE_LABELS),
        salts=write_salts(workdir / "tenants" / "salts", tenants),
    )
    for name in tenants:
        record = registry.create(name)
        assert record.credentials is not None  # create hands them out once
        tenancy.credentials[name] = (record.credentials.username, record.credentials.password)
        secret = credentials_dir(workdir.parent) / f"{name}.password"
        secret.parent.mkdir(mode=0o700, exist_ok=True)
        secret.touch(mode=0o600)
        secret.write_text(record.credentials.password + "\n")
        tenancy.signing_keys[name] = (record.signing_key_path, record.public_key_path)
    registry.apply_to_broker()
    return registry, tenancy


def try_refused_deploy(
    spec: PipelineSpec,
    head_cls: Any,
    paths: Any,
    broker: Any,
    private_pem: bytes,
    tenancy: Tenancy,
) -> dict[str, Any]:
    """Ask to deploy a confidential variant of ``spec`` (the lab's) in Frankfurt; return the
    refusal.

    The lab's pathology slides are confidential: the policy keeps them in jurisdiction LU,
    so a training job on the Frankfurt pool must be refused at deploy, before any service
    starts, with the rule and the offending label named (and recorded in the audit log).
    """
    from continuum.errors import PlacementError

    variant = type(spec).model_validate(
        spec.model_dump(mode="json") | {"name": "pathology-slides", "data_class": "confidential"}
    )
    try:
        head = head_cls.deploy(
            variant.tenant,
            [variant],
            paths,
            broker,
            private_pem,
            code_version="demo",
            policy=tenancy.policy,
            store_labels=tenancy.store_labels,
        )
    except PlacementError as refusal:
        return {
            "tenant": variant.tenant,
            "pipeline": variant.name,
            "data_class": variant.data_class.value,
            "refused": True,
            "message": str(refusal),
        }
    with contextlib.suppress(Exception):  # it must not run: the report says it was allowed
        head.stop(timeout_s=30)
    return {
        "tenant": variant.tenant,
        "pipeline": variant.name,
        "data_class": variant.data_class.value,
        "refused": False,
        "message": "the policy allowed it",
    }


def isolation_probe(broker: Any, tenancy: Tenancy, *, wait_s: float = 2.0) -> dict[str, Any]:
    """Try, with the second tenant's credentials, to read and to write the first's topics.

    A message the first tenant publishes on its own telemetry topic must not reach the
    second's subscriber to ``ctm/acme/#``, and one the second publishes there must not reach
    the first. Returns what was tried and what arrived.
    """
    if FIRST_TENANT not in tenancy.credentials or SECOND_TENANT not in tenancy.credentials:
        return {"checked": False, "why": "the broker takes anonymous clients (no tenants)"}
    from continuum.wire import topics
    from continuum.wire.mqtt import connect, make_client

    own = tenancy.broker_for(FIRST_TENANT, broker)
    other = tenancy.broker_for(SECOND_TENANT, broker)
    token = secrets.token_hex(8).encode()
    got: dict[str, list[bytes]] = {"intruder": [], "owner": []}
    lock = threading.Lock()

    def collect(name: str) -> Any:
        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with lock:
                got[name].append(bytes(message.payload))

        return on_message

    owner = make_client(f"demo-probe-{FIRST_TENANT}", own)
    intruder = make_client(f"demo-probe-{SECOND_TENANT}", other)
    owner.on_message = collect("owner")
    intruder.on_message = collect("intruder")
    try:
        for client, settings in ((owner, own), (intruder, other)):
            connect(client, settings)
            client.loop_start()
        tree = topics.tenant_filter(FIRST_TENANT)
        intruder.subscribe(tree, qos=1)
        owner.subscribe(tree, qos=1)
        time.sleep(0.5)
        probe_topic = f"ctm/{FIRST_TENANT}/probe/isolation"
        owner.publish(probe_topic, b"owner:" + token, qos=1)
        intruder.publish(probe_topic, b"intruder:" + token, qos=1)
        time.sleep(wait_s)
    finally:
        for client in (owner, intruder):
            with contextlib.suppress(Exception):
                client.loop_stop()
                client.disconnect()
    with lock:
        read = any(token in p for p in got["intruder"])
        written = any(p == b"intruder:" + token for p in got["owner"])
        control = any(p == b"owner:" + token for p in got["owner"])
    return {
        "checked": True,
        "control_delivered": control,
        "other_tenant_read_ours": read,
        "other_tenant_wrote_ours": written,
        "held": control and not read and not written,
    }


def store_evidence(store_root: Path, tenant: str, pipeline: str) -> dict[str, Any]:
    """Read every Parquet file of ``pipeline`` and look for what must not be there.

    The patient id must not be stored at all (dropped on the edge), and every technician
    value must be a pseudonym (``hmac-sha256:...``). Every text and field column of every
    row is searched for a raw patient id or technician name (the files are compressed, so
    searching their bytes would prove nothing).
    """
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = re.compile(r"P-\d{8}|tech-\d{2}")
    files = sorted((store_root / f"tenant={tenant}" / f"pipeline={pipeline}").rglob("*.parquet"))
    columns: set[str] = set()
    rows = 0
    technicians: list[str] = []
    raw_values: set[str] = set()
    for path in files:
        table = pq.read_table(path)
        columns |= set(table.column_names)
        rows += table.num_rows
        for name in table.column_names:
            kind = table.schema.field(name).type
            text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            if not (text or name.startswith("field_")):
                continue  # the tensor, the numbers
            for value in table.column(name).to_pylist():
                if value is None:
                    continue
                shown = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                if name == "field_technician":
                    technicians.append(shown)
                raw_values.update(raw.findall(shown))
    hashed = bool(technicians) and all(v.startswith("hmac-sha256:") for v in technicians)
    return {
        "files": len(files),
        "rows": rows,
        "field_columns": sorted(c for c in columns if c.startswith("field_")),
        "patient_id_column": "field_patient_id" in columns,
        "raw_values_found": sorted(raw_values)[:10],
        "technician_pseudonymised": hashed,
        "held": rows > 0 and "field_patient_id" not in columns and not raw_values and hashed,
    }


def audit_evidence(
    audit_root: Path, tenants: list[str], public_keys: dict[str, Path]
) -> dict[str, Any]:
    """Verify each tenant's audit log and list its deploy and policy records."""
    from cloud_head.audit import AuditAction, AuditLog

    out: dict[str, Any] = {}
    with AuditLog(audit_root) as log:
        for tenant in tenants:
            if not log.exists(tenant):
                out[tenant] = {"records": 0, "verified": False, "reason": "no audit log"}
                continue
            key = public_keys.get(tenant)
            result = log.verify(tenant, public_key_pem=key.read_bytes() if key else None)
            records = log.records(tenant)
            decisions = [
                {
                    "action": r.action,
                    "subject": r.subject,
                    "actor": r.actor,
                    "details": _short(r.details),
                }
                for r in records
                if r.action in (AuditAction.DEPLOY.value, AuditAction.POLICY_REFUSAL.value)
            ]
            out[tenant] = {
                "records": result.count,
                "verified": result.ok,
                "signature_checked": result.signature_checked,
                "reason": result.reason,
                "by_action": _by_action(records),
                "policy_decisions": decisions[:20],
            }
    return out


def _by_action(records: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.action] = counts.get(record.action, 0) + 1
    return counts


def _short(details: dict[str, Any]) -> dict[str, Any]:
    """Keep a record's details readable in the report: long lists and texts cut."""
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, str) and len(value) > 400:
            value = value[:400] + "..."
        elif isinstance(value, list) and len(value) > 8:
            value = [*value[:8], f"... {len(value) - 8} more"]
        out[key] = value
    return out


def uplink_plans(
    tenancy: Tenancy, agents: list[Any], specs: Mapping[Path, PipelineSpec]
) -> dict[str, str]:
    """Return each agent's uplink plan, as the agent computes it from the same policy."""
    from continuum.residency import load_policy, uplink_plan

    policy = load_policy(tenancy.policy)
    return {
        agent.node: uplink_plan(
            policy, specs[agent.spec_path], agent.labels, tenancy.store_labels
        ).describe()
        for agent in agents
    }
