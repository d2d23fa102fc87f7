"""A model version's lineage and model card: what the registry and the audit log say about it.

``export_model`` joins the registry's record of one version (parent, digest, signature, code
version, metrics, gate, data lineage) with the audit records whose subject names it
(registration, signature, the end of its training run, rollouts and rollbacks) or names the
run that trained it (``<pipeline>/run-<ms>`` in its lineage: the run's start with its data
snapshot, and the gate, recorded before the version existed) and writes both a JSON lineage
and a Markdown model card.  The card states whether the tenant's audit log verified when it
was exported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_head.audit import (
    AuditAction,
    AuditLog,
    AuditRecord,
    AuditTamperedError,
    VerifyResult,
    model_subject,
)
from continuum._fs import atomic_write
from continuum.wire.topics import check_name

if TYPE_CHECKING:
    from cloud_head.registry import ModelRegistry, ModelVersion

__all__ = ["LINEAGE_FORMAT", "ModelCardFiles", "export_model", "model_lineage", "render_model_card"]

LINEAGE_FORMAT = "continuum-model-lineage-v1"

_ROLLOUT_ACTIONS = (AuditAction.ROLLOUT.value, AuditAction.ROLLBACK.value)
_TBD = "_not stated: to be filled in by the model owner_"


@dataclass(frozen=True)
class ModelCardFiles:
    """Where ``export_model`` wrote the lineage and the card."""

    lineage_json: Path
    model_card_md: Path


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def model_lineage(
    version: ModelVersion,
    records: Sequence[AuditRecord],
    audit_check: VerifyResult | None,
    *,
    intended_use: str | None = None,
    exported_at: float | None = None,
) -> dict[str, Any]:
    """Return the JSON-able lineage of ``version`` with its audit ``records``.

    ``audit_check`` is the tenant log's verification at export time; None when the tenant
    has no audit log.
    """
    lineage = dict(version.lineage)
    signs = [r for r in records if r.action == AuditAction.SIGN.value]
    return {
        "format": LINEAGE_FORMAT,
        "exported_at": _iso(
            exported_at if exported_at is not None else datetime.now(UTC).timestamp()
        ),
        "tenant": version.tenant,
        "pipeline": version.pipeline,
        "version": version.version,
        "model": version.model,
        "status": version.status,
        "created_at": _iso(version.created_at),
        "parent": version.parent,
        "code_version": version.code_version,
        "intended_use": intended_use,
        "artifact": {
            "sha256": version.sha256,
            "size_bytes": version.size_bytes,
            "signature": version.signature,
            "key_fingerprint": signs[-1].details.get("key_fingerprint") if signs else None,
            "path": str(version.artifact_path),
        },
        "data": {
            "store_partitions": lineage.get("store_partitions", []),
            "store_rows": lineage.get("store_rows"),
            "trained_on_edge_samples": lineage.get("trained_on_edge_samples"),
            "holdout_edge_samples": lineage.get("holdout_edge_samples"),
            "gate_edge_slice": lineage.get("gate_edge_slice"),
            "holdout_rule": lineage.get("holdout_rule"),
            "training_cut": lineage.get("training_cut"),
        },
        "training": {
            "run": lineage.get("run"),
            "label_selector": lineage.get("label_selector"),
            "reason": lineage.get("reason"),
            "checkpoint": lineage.get("checkpoint"),
            "ray": lineage.get("ray"),
            "metrics": dict(version.metrics),
            "federated": lineage.get("federated"),
        },
        "gate": dict(version.gate),
        "lineage": lineage,
        "rollout_history": [
            {"seq": r.seq, "ts": r.ts, "action": r.action, "actor": r.actor, "details": r.details}
            for r in records
            if r.action in _ROLLOUT_ACTIONS
        ],
        "audit": {
            "log": "absent" if audit_check is None else "present",
            "verified": None if audit_check is None else audit_check.ok,
            "reason": None if audit_check is None else audit_check.reason,
            "first_bad_seq": None if audit_check is None else audit_check.first_bad_seq,
            "head_hash": None if audit_check is None else audit_check.head_hash,
            "records": [asdict(r) for r in records],
        },
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]


def render_model_card(lineage: Mapping[str, Any]) -> str:
    """Return a readable Markdown model card for a lineage from ``model_lineage``."""
    out = [
        *_provenance_sections(lineage),
        *_gate_section(lineage["gate"]),
        *_integrity_section(lineage["artifact"]),
        *_rollout_section(lineage["rollout_history"]),
        *_audit_section(lineage["audit"]),
    ]
    return "\n".join(out) + "\n"


def _provenance_sections(lineage: Mapping[str, Any]) -> list[str]:
    """The title, intended use, provenance, data snapshot and training run."""
    data, training = lineage["data"], lineage["training"]
    title = f"{lineage['pipeline']} {lineage['version']}"
    out = [
        f"# Model card: {title}",
        "",
        f"Tenant `{lineage['tenant']}`, model `{lineage['model']}`, status "
        f"**{lineage['status']}**, registered {lineage['created_at']}, exported "
        f"{lineage['exported_at']}.",
        "",
        "## Intended use",
        "",
        lineage.get("intended_use") or _TBD,
        "",
        "## Provenance",
        "",
        *_table(
            [
                ("Parent version", lineage["parent"]),
                ("Code version", lineage["code_version"]),
                ("Training reason", training["reason"]),
                ("Checkpoint", training["checkpoint"]),
            ]
        ),
        "",
        "## Data snapshot",
        "",
        *_table(
            [
                ("Store partitions", ", ".join(map(str, data["store_partitions"])) or None),
                ("Store rows", data["store_rows"]),
                ("Edge samples trained on", data["trained_on_edge_samples"]),
                ("Edge samples held out", data["holdout_edge_samples"]),
                ("Holdout rule", _holdout_rule(data.get("holdout_rule"))),
                ("Gate's edge slice per node", data.get("gate_edge_slice")),
            ]
        ),
        "",
        *_cut_section(data.get("training_cut")),
        "## Training run",
        "",
        *(
            _table([(f"Metric `{k}`", v) for k, v in sorted(training["metrics"].items())])
            if training["metrics"]
            else ["No training metrics recorded."]
        ),
        "",
    ]
    if training.get("federated"):
        out += _federated_section(training["federated"])
    elif training.get("ray"):
        out += [f"Ray: `{_cell(training['ray'])}`", ""]
    return out


def _federated_section(federated: Mapping[str, Any]) -> list[str]:
    """The federated lineage: rounds, sites, per-site sample counts, strategy, the digest."""
    counts = federated.get("sample_counts") or {}
    rounds = sorted(counts, key=int)
    sites = list(federated.get("sites") or [])
    out = [
        "### Federated training",
        "",
        f"Trained where the data lives (rule `{_cell(federated.get('rule'))}`): "
        f"{_cell(federated.get('rounds'))} round(s) of `{_cell(federated.get('strategy'))}` over "
        f"{len(sites)} site(s), quorum {_cell(federated.get('quorum'))}; only "
        f"{', '.join(federated.get('crosses') or []) or 'model updates'} crossed the sites' "
        "borders, never a sample.",
        "",
    ]
    if federated.get("resumed_from_round"):
        out += [f"Resumed after round {federated['resumed_from_round']} (a head restart).", ""]
    if rounds and sites:
        out += [
            "| round | " + " | ".join(sites) + " | clipped | excluded |",
            "|---|" + "---|" * (len(sites) + 2),
        ]
        for number in rounds:
            row = counts.get(number) or {}
            skipped = (federated.get("skipped") or {}).get(number) or {}
            cells = [
                str(row[s]) if s in row else ("skipped" if s in skipped else "-") for s in sites
            ]
            clipped = ", ".join((federated.get("clipped") or {}).get(number) or []) or "-"
            excluded = ", ".join((federated.get("excluded") or {}).get(number) or []) or "-"
            out.append(f"| {number} | " + " | ".join(cells) + f" | {clipped} | {excluded} |")
        out += ["", "Cells: each site's training samples in the round (counts, never data).", ""]
    out += [f"Aggregate sha256: `{_cell(federated.get('sha256'))}`", ""]
    return out


def _holdout_rule(rule: Any) -> str | None:
    if not isinstance(rule, Mapping):
        return None
    return (
        f"one block in {rule.get('every')} of {rule.get('block_s')} s of each node's capture "
        f"time held out; the gate takes each node's newest {rule.get('gate_per_node')}"
    )


def _cut_section(cuts: Any) -> list[str]:
    """Each node's training cut: frames it captured after this are unseen by the model."""
    if not isinstance(cuts, Mapping) or not cuts:
        return []
    out = [
        "Training cut per node (the newest sample trained on; the canary counts only "
        "telemetry windows that began after it):",
        "",
        "| node | captured at (UTC, edge clock) | seq |",
        "|---|---|---|",
    ]
    out += [
        f"| {_cell(node)} | {_iso(int(cut['captured_at_ns']) / 1e9)} | {cut['seq']} |"
        for node, cut in sorted(cuts.items())
        if isinstance(cut, Mapping) and "captured_at_ns" in cut and "seq" in cut
    ]
    return [*out, ""]


def _gate_section(gate: Mapping[str, Any]) -> list[str]:
    if not gate:
        return ["## Evaluation gate", "", "No gate result recorded.", ""]
    verdict = "passed" if gate.get("passed") else "failed"
    # Records written before tasks existed name no metric: those gates scored accuracy.
    metric = _cell(gate.get("metric") or "accuracy")
    task = f" A `{_cell(gate['task'])}` model, scored on `{metric}`." if gate.get("task") else ""
    return [
        "## Evaluation gate",
        "",
        f"The gate **{verdict}**: {gate.get('reason', 'no reason recorded')}{task}",
        "",
        *_table(
            [
                (f"Candidate {metric}", gate.get("candidate_score")),
                (f"Current model's {metric}", gate.get("current_score")),
                ("Required gain", gate.get("margin")),
                ("Gain achieved", gate.get("gain")),
                ("Holdout size", gate.get("holdout_size")),
            ]
        ),
        "",
        *_gate_parts(gate),
    ]


def _gate_parts(gate: Mapping[str, Any]) -> list[str]:
    """The scores on the reference holdout and on the edge slice apart, when recorded.

    The verdict is on both together; a reader sees here whether the candidate won on the
    sites' recent, never-trained-on samples, on the reference, or on one at the other's cost.
    """
    federated = gate.get("federated")
    if isinstance(federated, Mapping) and federated.get("sites"):
        out = [
            "Scored at each site on its own holdout (only these numbers left the sites):",
            "",
            "| Site | Holdout samples | Candidate | Current model |",
            "|---|---|---|---|",
        ]
        for site, score in sorted(federated["sites"].items()):
            out.append(
                f"| {_cell(site)} | {_cell(score.get('size'))} | "
                f"{_cell(score.get('candidate'))} | {_cell(score.get('current'))} |"
            )
        skipped = federated.get("skipped") or {}
        if skipped:
            out += ["", "Not scored: " + "; ".join(f"{s}: {w}" for s, w in sorted(skipped.items()))]
        return [*out, ""]
    parts = gate.get("parts")
    if not isinstance(parts, Mapping) or not parts:
        return []
    names = {"reference": "Reference holdout", "edge": "Edge slice (held out by time)"}
    out = ["| Part | Samples | Candidate | Current model |", "|---|---|---|---|"]
    for name, part in parts.items():
        out.append(
            f"| {names.get(name, _cell(name))} | {_cell(part.get('size'))} | "
            f"{_cell(part.get('candidate_score'))} | {_cell(part.get('current_score'))} |"
        )
    per_node = gate.get("edge_per_node")
    if isinstance(per_node, Mapping) and per_node:
        shown = ", ".join(f"{node} {count}" for node, count in sorted(per_node.items()))
        out += ["", f"Edge slice per node: {shown}."]
    return [*out, ""]


def _integrity_section(art: Mapping[str, Any]) -> list[str]:
    return [
        "## Integrity",
        "",
        *_table(
            [
                ("Artifact sha256", f"`{art['sha256']}`"),
                ("Size (bytes)", art["size_bytes"]),
                ("Ed25519 signature", f"`{art['signature']}`"),
                ("Signing key fingerprint", art["key_fingerprint"]),
            ]
        ),
        "",
    ]


def _rollout_section(history: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["## Rollout history", ""]
    if not history:
        return [*out, "No rollout or rollback recorded in the audit log."]
    out += ["| seq | time (UTC) | action | by | details |", "|---|---|---|---|---|"]
    out += [
        f"| {h['seq']} | {h['ts']} | {h['action']} | {_cell(h['actor'])} | {_cell(h['details'])} |"
        for h in history
    ]
    return out


def _audit_section(audit: Mapping[str, Any]) -> list[str]:
    out = ["", "## Audit trail", ""]
    if audit["log"] == "absent":
        out.append("The tenant has no audit log: nothing below is backed by a verified record.")
    elif audit["verified"]:
        out.append(
            f"The tenant's audit log verified at export ({audit['reason']}); head hash "
            f"`{audit['head_hash']}`. {len(audit['records'])} records name this version or "
            "its training run."
        )
    else:
        out.append(
            f"**The tenant's audit log FAILED verification** at record "
            f"{audit['first_bad_seq']}: {audit['reason']}. Do not rely on this card."
        )
    if audit["records"]:
        out += [
            "",
            "| seq | time (UTC) | action | event | by | hash |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['seq']} | {r['ts']} | {r['action']} | {_cell(r['details'].get('event'))} | "
            f"{_cell(r['actor'])} | `{r['hash'][:16]}` |"
            for r in audit["records"]
        ]
    return out


def export_model(
    registry: ModelRegistry,
    audit: AuditLog,
    tenant: str,
    pipeline: str,
    version: str,
    out_dir: Path,
    *,
    intended_use: str | None = None,
    public_key_pem: bytes | None = None,
) -> ModelCardFiles:
    """Write ``<pipeline>-<version>.lineage.json`` and ``.model-card.md`` into ``out_dir``.

    The tenant's audit log is verified first; a log that fails is still exported, with the
    failure stated on the card, since that is what an auditor needs to see.

    Raises:
        NotFoundError: the version is not registered for this tenant and pipeline.
    """
    chosen = registry.get(check_name(tenant, "tenant"), check_name(pipeline, "pipeline"), version)
    records: list[AuditRecord] = []
    check: VerifyResult | None = None
    if audit.exists(tenant):
        check = audit.verify(tenant, public_key_pem=public_key_pem)
        subjects = [model_subject(pipeline, version)]
        run = chosen.lineage.get("run")
        if isinstance(run, str) and run:
            subjects.append(model_subject(pipeline, run))
        try:
            found = [r for s in subjects for r in audit.records(tenant, subject=s)]
            records = sorted(found, key=lambda r: r.seq)
        except AuditTamperedError:
            records = []  # unreadable rows: the card already says the log failed
    lineage = model_lineage(chosen, records, check, intended_use=intended_use)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{pipeline}-{version}"
    files = ModelCardFiles(
        lineage_json=out_dir / f"{stem}.lineage.json",
        model_card_md=out_dir / f"{stem}.model-card.md",
    )
    atomic_write(files.lineage_json, json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    atomic_write(files.model_card_md, render_model_card(lineage))
    return files
