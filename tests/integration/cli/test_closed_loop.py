"""The closed loop end to end, shortened: real mosquitto, real Ray, edge-agent processes.

One run of ``continuum demo --chaos``'s loop on a broker of its own and the session's
cluster; the tests read the report it writes. The broker knows the tenants as the demo's
does: every edge agent, cloud service, the attacker and the probes connect as their own
identity (``cloud_head.tenants``). It proves the whole chain moves while the run attacks and
faults itself: a drifted camera's samples are uplinked and stored, a new
model is trained on Ray Train, gated, registered, canaried and rolled out, accuracy at the
drifted site rises after the rollout, and every sample the edge selected is accounted for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud_head.cli import audit as audit_cli
from continuum.embedded.broker import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings
from pipelines.demo._agents import sites
from pipelines.demo._chaos import CHAOS_NODE, FAULT_KINDS
from pipelines.demo._tenants import create_tenants, credentials_dir, nodes_to_enrol
from pipelines.demo.demo import DemoOptions, prepare_workdir, run_loop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def loop_run(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: Any
) -> tuple[dict[str, Any], str]:
    """One run of the loop under --chaos, on a broker of its own (the run kills it) that
    knows the tenants' identities; the report and the broker's log."""
    workdir = prepare_workdir(tmp_path_factory.mktemp("loop") / "demo")
    options = DemoOptions(
        duration_s=140, drift_at_s=20, fps=25, workdir=workdir, live=False, chaos=True
    )
    factory = [node for node, _, _ in sites(options.agents)]
    registry, tenancy = create_tenants(workdir / "cloud", nodes_to_enrol(factory))
    broker = EmbeddedBroker(
        tmp_path_factory.mktemp("loop-broker"),
        password_file=registry.password_file,
        acl_file=registry.acl_file,
    ).start()
    try:
        report = run_loop(
            options,
            workdir,
            BrokerSettings(host=broker.host, port=broker.port),
            console=Console(width=120, force_terminal=False),
            dashboard=None,
            tenancy=tenancy,
            embedded_broker=broker,
        )
    finally:
        broker.stop()
    return report, broker.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def loop_report(loop_run: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """The report of the run."""
    return loop_run[0]


def _retrained(report: dict[str, Any]) -> str:
    """Return the first version after v1 that was promoted."""
    for entry in report["rollout"]["history"]:
        version = entry.split()[1].rstrip(":")
        if entry.startswith("promoted") and version != "v1":
            return version
    raise AssertionError(f"no retrained version was promoted: {report['rollout']['history']}")


def _drifted(report: dict[str, Any]) -> dict[str, Any]:
    (agent,) = [a for a in report["agents"].values() if a["drifted_camera"]]
    return agent


class TestClosedLoop:
    def test_a_new_model_was_trained_gated_and_registered(
        self, loop_report: dict[str, Any]
    ) -> None:
        registered = [t for t in loop_report["trainings"] if t["outcome"] == "registered"]
        assert len(registered) >= 2, loop_report["trainings"]
        retrain = registered[1]
        assert retrain["parent"] == "v1"
        assert retrain["gate"]["passed"] is True
        assert retrain["gate"]["candidate_score"] >= retrain["gate"]["current_score"]
        assert retrain["gate"]["holdout_size"] > 0
        assert retrain["edge_samples"] > 0
        assert len(loop_report["versions"]) >= 2

    def test_the_new_model_was_canaried_then_rolled_out(self, loop_report: dict[str, Any]) -> None:
        history = loop_report["rollout"]["history"]
        version = _retrained(loop_report)
        assert any(h.startswith(f"canary {version} ") for h in history), history
        served = {p["model_version"] for p in _drifted(loop_report)["live"]}
        assert version in served

    def test_accuracy_at_the_drifted_site_rose_after_the_rollout(
        self, loop_report: dict[str, Any]
    ) -> None:
        agent = _drifted(loop_report)
        drift_at = loop_report["drift"]["at_s"]

        # Live accuracy on the frames the camera saw: after the drift under v1, then under v2.
        def live_accuracy(version: str) -> float:
            points = [
                p for p in agent["live"] if p["t"] > drift_at + 4 and p["model_version"] == version
            ]
            frames = sum(p["frames"] for p in points)
            assert frames > 0, f"no drifted frames served by {version}"
            return (
                sum(p["accuracy"] * p["frames"] for p in points if p["accuracy"] is not None)
                / frames
            )

        assert live_accuracy(_retrained(loop_report)) > live_accuracy("v1") + 0.15
        # And on the reserved split, under the same fault, which nothing uplinked.
        assert agent["accuracy_after_recovery"] > agent["accuracy_after_drift"] + 0.15

    def test_the_fault_was_seen_within_30_s_by_the_frames_and_the_labels(
        self, loop_report: dict[str, Any]
    ) -> None:
        detection = _drifted(loop_report)["drift_detection"]
        assert detection["first_s"] is not None and detection["first_s"] <= 30, detection
        assert {"inputs", "labels"} <= set(detection["by_signal"]), detection
        assert loop_report["targets"]["drift_detected"] is True

    def test_live_accuracy_is_reported_beside_the_reserved_splits(
        self, loop_report: dict[str, Any]
    ) -> None:
        agent = _drifted(loop_report)
        served = [p for p in agent["live"] if p["model_version"] in loop_report["versions"]]
        assert served and all(p["reserved_accuracy"] is not None for p in served)
        assert agent["reserved_accuracy_at_end"] == agent["accuracy_after_recovery"]
        assert loop_report["drift"]["frames"].startswith("never repeated: per-frame fault draws")

    def test_the_report_files_were_written(self, loop_report: dict[str, Any]) -> None:
        workdir = Path(loop_report["options"]["workdir"])
        assert (workdir / "report.json").stat().st_size > 0
        assert (workdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestChaos:
    def test_every_fault_was_injected(self, loop_report: dict[str, Any]) -> None:
        faults = {f["kind"]: f for f in loop_report["faults"]}
        assert set(faults) == set(FAULT_KINDS)
        assert all(f["ok"] for f in faults.values()), faults
        assert faults["garbage"]["confirmed"] == faults["garbage"]["sent"] > 0
        # Sent as the tenant's chaos box: the broker took its own topics, refused the rest.
        assert 0 < faults["garbage"]["refused"] < faults["garbage"]["sent"]
        assert faults["link_cut"]["reset_connections"] >= 1

    def test_the_killed_agent_and_broker_were_restarted(self, loop_report: dict[str, Any]) -> None:
        restarted = {r["service"] for r in loop_report["restarts"]}
        assert {"mosquitto", "edge agent cam-lux1-a"} <= restarted, restarted

    def test_every_selected_sample_was_stored_once_refused_or_is_still_in_an_outbox(
        self, loop_report: dict[str, Any]
    ) -> None:
        account = loop_report["account"]
        assert set(account["nodes"]) == {"cam-lux1-a", "cam-lux1-b", "cam-lux2-a", "lab-lux3-a"}
        for node, entry in account["nodes"].items():
            assert entry["selected"] > 0, node
            # The killed agent's ledger lives in its outbox: a count lost with the process
            # would show here as a negative loss.
            assert entry["lost"] == 0 and entry["duplicates"] == 0, (node, entry)
            assert entry["selected"] == entry["stored"] + entry["refused"] + entry["waiting"]
        assert account["balanced"] is True
        assert loop_report["targets"]["no_sample_lost_or_duplicated"] is True


class TestAuditTrail:
    def test_the_audit_log_verifies(
        self, loop_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        workdir, tenant = Path(loop_report["options"]["workdir"]), loop_report["tenant"]
        # The tenant registry pins the key the run signed with; the operator's credential.
        args = argparse.Namespace(
            tenant=tenant,
            root=workdir / "cloud",
            public_key=None,
            password_file=credentials_dir(workdir) / f"{tenant}.password",
        )
        assert audit_cli.run_verify(args) == 0, capsys.readouterr().out

    def test_the_new_models_training_gate_registration_signature_and_rollout_are_recorded(
        self, loop_report: dict[str, Any], tmp_path: Path
    ) -> None:
        root = Path(loop_report["options"]["workdir"]) / "cloud"
        version = _retrained(loop_report)
        args = argparse.Namespace(
            tenant=loop_report["tenant"],
            pipeline=loop_report["pipeline"],
            model=version,
            out=tmp_path,
            intended_use=None,
            root=root,
            public_key=None,
            password_file=credentials_dir(root.parent) / f"{loop_report['tenant']}.password",
        )
        assert audit_cli.run_export(args) == 0

        lineage = json.loads(
            (tmp_path / f"{loop_report['pipeline']}-{version}.lineage.json").read_text()
        )
        assert lineage["audit"]["verified"] is True
        events = [(r["action"], r["details"].get("event")) for r in lineage["audit"]["records"]]
        for expected in [
            ("training_run", "started"),
            ("gate", None),
            ("register", None),
            ("sign", None),
            ("rollout", "canary"),
            ("training_run", "finished"),
            ("rollout", "promote"),
        ]:
            assert expected in events, events
        started = lineage["audit"]["records"][0]["details"]
        assert started["parent"] == "v1"
        assert started["data"]["store_rows"] > 0 and started["data"]["store_partitions"]
        gate = next(r for r in lineage["audit"]["records"] if r["action"] == "gate")["details"]
        assert gate["verdict"] == "passed" and gate["current_version"] == "v1"


class TestTwoTenantsUnderThePolicy:
    def test_the_second_tenant_ran_beside_the_first(self, loop_report: dict[str, Any]) -> None:
        lab = loop_report["tenants"]["medica"]
        assert lab["pipeline"] == "lab-forms"
        assert lab["frames"] > 0 and lab["uplinked"] > 0

    def test_the_confidential_variant_was_refused_at_deploy_naming_the_rule(
        self, loop_report: dict[str, Any]
    ) -> None:
        refused = loop_report["policy"]["refused_deploy"]
        assert refused["refused"] is True
        assert "confidential.jurisdiction" in refused["message"]
        assert "continuum.io/jurisdiction=DE" in refused["message"]
        # Federated training would keep the slides in LU, but their site has no Ray node.
        assert "continuum.io/site=lux-3" in refused["message"]

    def test_restricted_fields_never_reached_the_store_and_confidential_ones_are_hashed(
        self, loop_report: dict[str, Any]
    ) -> None:
        plans = loop_report["policy"]["uplink_plans"]
        assert plans["lab-lux3-a"] == "send samples (drop patient_id; hash technician)"
        store = loop_report["policy"]["store"]["lab-forms"]
        assert store["rows"] > 0 and store["held"] is True
        assert store["field_columns"] == ["field_technician"]
        assert store["raw_values_found"] == []

    def test_both_audit_logs_verify_with_their_signed_heads(
        self, loop_report: dict[str, Any]
    ) -> None:
        audits = loop_report["policy"]["audit"]
        assert set(audits) == {"acme", "medica"}
        for audit in audits.values():
            assert audit["verified"] is True and audit["signature_checked"] is True
        assert audits["medica"]["by_action"]["policy_refusal"] == 1
        assert all(loop_report["targets"].values())


class TestEveryConnectionIsItsOwnIdentity:
    def test_services_and_agents_connected_as_their_identities_bound_to_their_client_ids(
        self, loop_run: tuple[dict[str, Any], str]
    ) -> None:
        report, broker_log = loop_run
        identities = ["ingest.0@acme", "control@acme", "ingest.0@medica", "control@medica"]
        identities += [f"edge.{node}@acme" for node in report["agents"]]
        identities += ["edge.lab-lux3-a@medica", f"edge.{CHAOS_NODE}@acme"]
        for identity in identities:
            assert f"as {identity} (p5" in broker_log and f"u'{identity}'" in broker_log, identity
        for old in ("ctm-ingest-", "ctm-controller-", "ctm-fleet-", "ctm-edge-"):
            assert old not in broker_log

    def test_a_node_could_not_act_as_another_node_of_its_tenant(
        self, loop_report: dict[str, Any]
    ) -> None:
        within = loop_report["policy"]["node_isolation"]
        assert within["checked"] is True and within["control_delivered"] is True, within
        assert within["desired_retained"] is True, within  # the read attempt had a target
        assert set(within["attempts"]) == {
            "publish status",
            "publish samples",
            "publish telemetry",
            "publish stored receipt",
            "publish desired state",
            "read desired state",
        }
        assert all(within["attempts"].values()), within
        assert loop_report["targets"]["nodes_isolated_within_a_tenant"] is True

    def test_another_tenants_node_could_neither_read_nor_write_the_first_tenants_topics(
        self, loop_report: dict[str, Any]
    ) -> None:
        isolation = loop_report["policy"]["isolation"]
        assert isolation["checked"] is True and isolation["held"] is True, isolation
        assert isolation["intruder"] == "edge.probe@medica"
        assert loop_report["targets"]["tenants_isolated"] is True
