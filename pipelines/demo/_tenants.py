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


#: The lab's camera: the second tenant's one edge node, at the lab's own site (no Ray node).
LAB_NODE = "lab-lux3-a"
LAB_SITE = "lux-3"
#: A node of each tenant enrolled only for the isolation probes (it runs no agent), so a
#: probe never takes over a serving agent's session (one identity, one connection).
PROBE_NODE = "probe"


@dataclass
class Tenancy:
    """Who is who on the demo's broker, and the policy they live under.

    ``operators`` maps a tenant to its operator credential (username, password): it reads the
    tenant's tree and writes nothing.  ``nodes`` maps (tenant, node) to the node's own
    identity, enrolled in the tenant registry: each edge agent, the chaos attacker and the
    probes connect as one.  The cloud services take theirs from the registry (``tenants_root``).
    Both are empty on an anonymous broker (the tests' shared one), where isolation cannot be
    shown and is reported so.
    """

    policy: Path
    store_labels: dict[str, str]
    salts: dict[str, Path]
    operators: dict[str, tuple[str, str]] = field(default_factory=dict)
    nodes: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    signing_keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def secured(self) -> bool:
        """Whether the broker knows the tenants (passwords and ACL), not anonymous clients."""
        return bool(self.operators)

    def broker_for_node(self, tenant: str, node: str, broker: Any) -> Any:
        """Return ``broker`` settings with ``node``'s own identity, when the broker has any.

        Raises:
            KeyError: the broker knows the tenants but the node was not enrolled.
        """
        if not self.secured:
            return broker
        user, password = self.nodes[(tenant, node)]
        return broker.model_copy(update={"username": user, "password": password})

    def broker_for_operator(self, tenant: str, broker: Any) -> Any:
        """Return ``broker`` settings with ``tenant``'s operator credential (read only)."""
        if not self.secured:
            return broker
        user, password = self.operators[tenant]
        return broker.model_copy(update={"username": user, "password": password})


def nodes_to_enrol(factory_nodes: list[str]) -> dict[str, list[str]]:
    """Return every node identity the demo enrols, per tenant: the factory's cameras, the
    chaos attacker and the probe of the first tenant; the lab's camera and the probe of the
    second."""
    from pipelines.demo._chaos import CHAOS_NODE

    return {
        FIRST_TENANT: [*factory_nodes, CHAOS_NODE, PROBE_NODE],
        SECOND_TENANT: [LAB_NODE, PROBE_NODE],
    }


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


def create_tenants(workdir: Path, nodes: Mapping[str, list[str]]) -> tuple[Any, Tenancy]:
    """Create the tenants of ``nodes`` in a registry under ``workdir/tenants`` and enrol each
    tenant's nodes there; return the registry and the tenancy.

    The registry writes mosquitto's password and ACL files, with an identity per node and
    per cloud service: start the broker on them.  The services' passwords stay in the
    registry (``service_credentials_dir``), where the cloud head reads them.  Each tenant's
    operator password, which the registry hands out once, goes to
    ``workdir/../credentials/<tenant>.password`` (mode 0600) for the operator commands.
    """
    from cloud_head.tenants import TenantRegistry

    registry = TenantRegistry(workdir / "tenants")
    tenancy = Tenancy(
        policy=policy_path(),
        store_labels=dict(STORE_LABELS),
        salts=write_salts(workdir / "tenants" / "salts", list(nodes)),
    )
    for name, names in nodes.items():
        record = registry.create(name)
        assert record.credentials is not None  # create hands them out once
        tenancy.operators[name] = (record.credentials.username, record.credentials.password)
        secret = credentials_dir(workdir.parent) / f"{name}.password"
        secret.parent.mkdir(mode=0o700, exist_ok=True)
        secret.touch(mode=0o600)
        secret.write_text(record.credentials.password + "\n")
        tenancy.signing_keys[name] = (record.signing_key_path, record.public_key_path)
        for node in names:
            enrolled = registry.enroll_node(name, node)
            assert enrolled.password is not None  # enrolled with a password, not a certificate
            tenancy.nodes[(name, node)] = (enrolled.username, enrolled.password)
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
    so a training job on the Frankfurt pool is refused. Federated training would keep them
    in LU, but the slides are scanned at the lab's own site (lux-3), which has no Ray node
    to train on: the deploy must be refused before any service starts, with the rule, the
    offending label and the node that would fix it named (and recorded in the audit log).
    The hospitals scenario shows the other outcome, where each site has such a node.
    """
    from continuum.errors import PlacementError

    data = spec.model_dump(mode="json")
    edge = data["edge"] | {"where": data["edge"]["where"] | {SITE: LAB_SITE}}
    variant = type(spec).model_validate(
        data | {"name": "pathology-slides", "data_class": "confidential", "edge": edge}
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


class _Probe:
    """One MQTT client of a probe: connects as an identity with no lasting session (the
    broker keeps nothing queued for it afterwards) and records what it receives."""

    def __init__(self, name: str, settings: Any) -> None:
        from continuum.wire.mqtt import make_client

        # The broker forces the client id to the identity; without one (anonymous) a name.
        self.settings = settings.model_copy(update={"session_expiry_s": 0})
        self.client = make_client(settings.username or f"demo-probe-{name}", self.settings)
        self.received: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload), bool(message.retain)))

    def start(self) -> _Probe:
        """Connect (paho's network thread runs from here on)."""
        from continuum.wire.mqtt import connect

        connect(self.client, self.settings)
        return self

    def got(self, token: bytes, topic: str | None = None) -> list[bytes]:
        """Return the payloads received that hold ``token`` (on ``topic`` only, if given)."""
        with self._lock:
            return [p for t, p, _ in self.received if token in p and topic in (None, t)]

    def retained_on(self, topic: str) -> bool:
        """Whether a retained message arrived on ``topic``."""
        with self._lock:
            return any(t == topic and retained and p for t, p, retained in self.received)

    def close(self) -> None:
        """Disconnect; best effort."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


def isolation_probe(broker: Any, tenancy: Tenancy, *, wait_s: float = 2.0) -> dict[str, Any]:
    """Try, with a node identity of the second tenant, to read and to write the first's topics.

    The first tenant's probe node publishes on its own telemetry topic, which the first
    tenant's operator (reading its whole tree) must receive; the second tenant's probe node
    subscribes to ``ctm/acme/#`` and must not receive it, and what it publishes on the first
    tenant's probe topic must not reach the operator. Returns what was tried and what arrived.
    """
    if not tenancy.secured:
        return {"checked": False, "why": "the broker takes anonymous clients (no tenants)"}
    from continuum.wire import topics

    token = secrets.token_hex(8).encode()
    probe_topic = topics.telemetry(FIRST_TENANT, "isolation-probe", PROBE_NODE)
    reader = _Probe("reader", tenancy.broker_for_operator(FIRST_TENANT, broker))
    owner = _Probe("owner", tenancy.broker_for_node(FIRST_TENANT, PROBE_NODE, broker))
    intruder = _Probe("intruder", tenancy.broker_for_node(SECOND_TENANT, PROBE_NODE, broker))
    try:
        for probe in (reader, owner, intruder):
            probe.start()
        tree = topics.tenant_filter(FIRST_TENANT)
        reader.client.subscribe(tree, qos=1)
        intruder.client.subscribe(tree, qos=1)
        time.sleep(0.5)
        owner.client.publish(probe_topic, b"owner:" + token, qos=1)
        intruder.client.publish(probe_topic, b"intruder:" + token, qos=1)
        time.sleep(wait_s)
    finally:
        for probe in (reader, owner, intruder):
            probe.close()
    read = bool(intruder.got(token))
    written = b"intruder:" + token in reader.got(token)
    control = b"owner:" + token in reader.got(token)
    return {
        "checked": True,
        "owner": owner.settings.username,
        "intruder": intruder.settings.username,
        "control_delivered": control,
        "other_tenant_read_ours": read,
        "other_tenant_wrote_ours": written,
        "held": control and not read and not written,
    }


def node_isolation_probe(
    broker: Any, tenancy: Tenancy, *, target: str, pipeline: str, wait_s: float = 2.0
) -> dict[str, Any]:
    """Try, with one node identity of the first tenant, to act as another node of it.

    The probe node publishes ``target``'s status, samples (of ``pipeline``), telemetry and
    stored receipt, and its desired state (which only the tenant's control plane may write),
    and subscribes to ``target``'s desired state.  The tenant's operator, reading the whole
    tree, sees what the broker let through; the probe's own telemetry must reach it (the
    control), nothing written as ``target`` may, and the retained desired state the operator
    is replayed must not reach the probe.  Returns each attempt with whether it was refused.
    """
    if not tenancy.secured:
        return {"checked": False, "why": "the broker takes anonymous clients (no identities)"}
    from continuum.wire import topics

    tenant = FIRST_TENANT
    token = secrets.token_hex(8).encode()
    writes = {
        "publish status": topics.node_status(tenant, target),
        "publish samples": topics.samples(tenant, pipeline, target),
        "publish telemetry": topics.telemetry(tenant, pipeline, target),
        "publish stored receipt": topics.node_stored(tenant, target),
        "publish desired state": topics.node_desired(tenant, target),
    }
    own = topics.telemetry(tenant, pipeline, PROBE_NODE)
    desired = topics.node_desired(tenant, target)
    reader = _Probe("reader", tenancy.broker_for_operator(tenant, broker))
    intruder = _Probe("intruder", tenancy.broker_for_node(tenant, PROBE_NODE, broker))
    try:
        for probe in (reader, intruder):
            probe.start()
        reader.client.subscribe(topics.tenant_filter(tenant), qos=1)
        intruder.client.subscribe(desired, qos=1)
        time.sleep(0.5)
        intruder.client.publish(own, b"own:" + token, qos=1)
        for attempt, topic in writes.items():
            intruder.client.publish(topic, f"{attempt}:".encode() + token, qos=1)
        time.sleep(wait_s)
    finally:
        for probe in (reader, intruder):
            probe.close()
    attempts = {attempt: not reader.got(token, topic) for attempt, topic in writes.items()}
    attempts["read desired state"] = not intruder.got(b"", desired)
    control = bool(reader.got(b"own:" + token, own))
    return {
        "checked": True,
        "intruder": intruder.settings.username,
        "target": target,
        "control_delivered": control,
        "desired_retained": reader.retained_on(desired),
        "attempts": attempts,
        "held": control and all(attempts.values()),
    }


@dataclass(frozen=True)
class StoreScan:
    """What one pipeline's Parquet files hold: how many files and rows, which columns, and
    every value of every text and field column (the tensor and the numbers left out)."""

    files: int
    rows: int
    columns: frozenset[str]
    values: tuple[tuple[str, str], ...]  # (column, value as text)

    def of(self, column: str) -> list[str]:
        """The values of ``column``."""
        return [value for name, value in self.values if name == column]


def scan_store(store_root: Path, tenant: str, pipeline: str) -> StoreScan:
    """Read every Parquet file of ``pipeline`` under ``store_root`` (the files are compressed,
    so searching their bytes would prove nothing: each value is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((store_root / f"tenant={tenant}" / f"pipeline={pipeline}").rglob("*.parquet"))
    columns: set[str] = set()
    rows = 0
    values: list[tuple[str, str]] = []
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
                values.append((name, shown))
    return StoreScan(len(files), rows, frozenset(columns), tuple(values))


def store_evidence(store_root: Path, tenant: str, pipeline: str) -> dict[str, Any]:
    """Read every Parquet file of ``pipeline`` and look for what must not be there.

    The patient id must not be stored at all (dropped on the edge), and every technician
    value must be a pseudonym (``hmac-sha256:...``). Every text and field column of every
    row is searched for a raw patient id or technician name (``scan_store``).
    """
    import re

    raw = re.compile(r"P-\d{8}|tech-\d{2}")
    scan = scan_store(store_root, tenant, pipeline)
    raw_values = {found for _, value in scan.values for found in raw.findall(value)}
    technicians = scan.of("field_technician")
    hashed = bool(technicians) and all(v.startswith("hmac-sha256:") for v in technicians)
    columns = scan.columns
    return {
        "files": scan.files,
        "rows": scan.rows,
        "field_columns": sorted(c for c in columns if c.startswith("field_")),
        "patient_id_column": "field_patient_id" in columns,
        "raw_values_found": sorted(raw_values)[:10],
        "technician_pseudonymised": hashed,
        "held": scan.rows > 0 and "field_patient_id" not in columns and not raw_values and hashed,
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
