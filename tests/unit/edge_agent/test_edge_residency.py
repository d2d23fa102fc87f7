"""The edge applies the residency plan before anything is queued, and fails closed: without a
plan for fields above the pipeline's class, and for fields the pipeline does not declare."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from continuum.errors import ConfigError
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER
from continuum.residency import ResidencyPolicy, hash_field, uplink_plan
from continuum.signing import generate_keypair
from continuum.sources import Frame
from continuum.spec import PipelineSpec
from continuum.wire.codec import MAX_FIELD_BYTES
from edge_agent.agent import EdgeAgent, residency_plans
from edge_agent.config import AgentSettings
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, SampleEntry
from edge_agent.uplink import ResidencyGate
from edge_agent.uplink._gate import MAX_UNDECLARED_NAMES, OTHER_UNDECLARED

SALT = b"0123456789abcdef-tenant-salt"
POLICY_YAML = """
api_version: continuum.io/v1
kind: ResidencyPolicy
classes:
  public: {}
  internal: {country: [LU, DE]}
  confidential: {jurisdiction: [LU], field_action: hash}
  restricted: {same_site: true, field_action: drop}
tenants:
  strict:
    restricted: {same_site: true, field_action: keep_at_edge}
"""
NODE = {TIER: "edge", SITE: "lux-1", COUNTRY: "LU", JURISDICTION: "LU"}
STORE_DE = {TIER: "cloud", SITE: "fra-dc", COUNTRY: "DE", JURISDICTION: "DE"}
FIELDS = {
    "iban": "restricted",
    "operator": "confidential",
    "amount": "internal",
    "crop": "internal",
}


def spec_data(tenant: str = "bank", fields: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": "payments",
        "tenant": tenant,
        "data_class": "internal",
        "edge": {
            "model": "scorer",
            "backend": "onnxruntime",
            "input": {"shape": [1, 8, 8], "fields": FIELDS if fields is None else fields},
            "where": {TIER: "edge"},
        },
        "uplink": {"policy": {"kind": "random", "rate": 1.0}},
    }


def entry(seq: int, **fields: Any) -> SampleEntry:
    return SampleEntry(
        pipeline="payments",
        model_version="v1",
        data_class="internal",
        seq=seq,
        captured_at_ns=seq,
        tensor=np.zeros((1, 8, 8), np.float32),
        prediction=0,
        confidence=0.5,
        fields=fields,
    )


def gate_for(tenant: str = "bank", *, policy: bool = True) -> tuple[ResidencyGate, AgentMetrics]:
    spec = PipelineSpec.from_dict(spec_data(tenant))
    metrics = AgentMetrics()
    plan = (
        uplink_plan(ResidencyPolicy.from_yaml(POLICY_YAML), spec, NODE, STORE_DE)
        if policy
        else None
    )
    gate = ResidencyGate(
        {"payments": plan},
        declared={"payments": spec.edge.input.fields},
        salt=SALT,
        metrics=metrics,
    )
    return gate, metrics


def sample_value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class TestTheGateAppliesThePlan:
    def test_restricted_fields_are_dropped_and_confidential_ones_hashed(self) -> None:
        gate, metrics = gate_for()
        (out,) = gate.admit([entry(1, iban="LU28 0019", operator="Ada", amount=7)])
        assert dict(out.fields) == {
            "operator": hash_field("operator", "Ada", salt=SALT),
            "amount": "7",  # numbers travel as text
        }
        assert (
            sample_value(
                metrics,
                "continuum_edge_fields_dropped_total",
                pipeline="payments",
                reason="residency",
            )
            == 1
        )
        assert sample_value(metrics, "continuum_edge_fields_hashed_total", pipeline="payments") == 1

    def test_keep_at_edge_queues_no_sample_and_counts_it(self) -> None:
        gate, metrics = gate_for("strict")
        assert gate.admit([entry(1, iban="x"), entry(2)]) == []
        assert (
            sample_value(metrics, "continuum_edge_samples_kept_at_edge_total", pipeline="payments")
            == 2
        )

    def test_a_field_the_wire_cannot_carry_is_dropped_not_the_sample(self) -> None:
        gate, metrics = gate_for()
        (out,) = gate.admit([entry(1, crop=b"x" * (MAX_FIELD_BYTES + 1), amount=3)])
        assert dict(out.fields) == {"amount": "3"}
        assert (
            sample_value(
                metrics,
                "continuum_edge_fields_dropped_total",
                pipeline="payments",
                reason="too_large",
            )
            == 1
        )

    def test_a_restricted_value_never_touches_the_outbox_disk(self, tmp_path: Path) -> None:
        gate, _ = gate_for()
        outbox = Outbox(tmp_path / "outbox.db", max_bytes=10**7, ttl_s=60, admit=gate.admit)
        try:
            outbox.append_samples(
                [entry(s, iban="LU28-SECRET-IBAN", operator="Ada") for s in (1, 2)]
            )
            pending = outbox.next_samples(10, 10**6)
            assert pending is not None
            assert [dict(r.fields) for r in pending.records] == [
                {"operator": hash_field("operator", "Ada", salt=SALT)}
            ] * 2
        finally:
            outbox.close()
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        assert b"LU28-SECRET-IBAN" not in on_disk and b"Ada" not in on_disk


def undeclared_count(metrics: AgentMetrics, field: str, pipeline: str = "payments") -> float:
    return sample_value(
        metrics, "continuum_edge_fields_undeclared_dropped_total", pipeline=pipeline, field=field
    )


class TestUndeclaredFieldsFailClosed:
    def test_a_misspelt_field_is_dropped_counted_by_name_and_logged_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        gate, metrics = gate_for()
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink._gate"):
            out = gate.admit([entry(s, patientid=f"P-{s}", amount=s) for s in (1, 2, 3)])
        assert [dict(e.fields) for e in out] == [{"amount": "1"}, {"amount": "2"}, {"amount": "3"}]
        assert undeclared_count(metrics, "patientid") == 3
        warnings = [r.getMessage() for r in caplog.records if "patientid" in r.getMessage()]
        assert len(warnings) == 1
        assert "does not declare it" in warnings[0] and "edge.input.fields" in warnings[0]
        # Only the undeclared name is counted here, not as a residency or wire drop.
        assert (
            sample_value(
                metrics,
                "continuum_edge_fields_dropped_total",
                pipeline="payments",
                reason="residency",
            )
            == 0
        )

    def test_without_a_residency_plan_undeclared_fields_are_still_dropped(self) -> None:
        gate, metrics = gate_for(policy=False)
        (out,) = gate.admit([entry(1, amount=5, shift="night")])
        assert dict(out.fields) == {"amount": "5"}
        assert undeclared_count(metrics, "shift") == 1

    def test_a_pipeline_the_gate_was_not_told_about_sends_no_fields(self) -> None:
        metrics = AgentMetrics()
        gate = ResidencyGate({"payments": None}, declared={}, salt=None, metrics=metrics)
        (out,) = gate.admit([entry(1, amount=5)])
        assert dict(out.fields) == {}
        assert undeclared_count(metrics, "amount") == 1

    def test_ever_new_names_are_counted_under_one_label_past_the_bound(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        gate, metrics = gate_for()
        extra = MAX_UNDECLARED_NAMES + 5
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink._gate"):
            for index in range(extra):
                gate.admit([entry(index, **{f"serial-{index}": "x"})])
        assert undeclared_count(metrics, "serial-0") == 1
        assert undeclared_count(metrics, f"serial-{MAX_UNDECLARED_NAMES - 1}") == 1
        assert undeclared_count(metrics, f"serial-{MAX_UNDECLARED_NAMES}") == 0
        assert undeclared_count(metrics, OTHER_UNDECLARED) == 5
        assert len(caplog.records) == MAX_UNDECLARED_NAMES + 1  # one line for all the others

    def test_an_undeclared_value_never_touches_the_outbox_disk(self, tmp_path: Path) -> None:
        gate, metrics = gate_for()
        outbox = Outbox(tmp_path / "outbox.db", max_bytes=10**7, ttl_s=60, admit=gate.admit)
        try:
            outbox.append_samples([entry(s, patientid="P-SECRET-0042", amount=s) for s in (1, 2)])
            pending = outbox.next_samples(10, 10**6)
            assert pending is not None
            assert [dict(r.fields) for r in pending.records] == [{"amount": "1"}, {"amount": "2"}]
        finally:
            outbox.close()
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        assert b"P-SECRET-0042" not in on_disk
        assert undeclared_count(metrics, "patientid") == 2


class TestFrames:
    def test_a_frame_field_with_a_bad_name_or_type_is_refused_where_it_is_made(self) -> None:
        with pytest.raises(ValueError, match="invalid field name 'IBAN'"):
            Frame(np.zeros(1), fields={"IBAN": "x"})
        with pytest.raises(TypeError, match="str, bytes, int or float"):
            Frame(np.zeros(1), fields={"when": object()})  # type: ignore[dict-item]


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    spec = tmp_path / "payments.yaml"
    spec.write_text(yaml.safe_dump(spec_data()), encoding="utf-8")
    _, public = generate_keypair()
    (tmp_path / "tenant.pub.pem").write_bytes(public)
    (tmp_path / "policy.yaml").write_text(POLICY_YAML, encoding="utf-8")
    (tmp_path / "salt").write_bytes(SALT)
    return {
        "node_id": "cam-1",
        "tenant": "bank",
        "labels": NODE,
        "state_dir": "state",
        "trusted_public_key": "tenant.pub.pem",
        "pipelines": [
            {
                "spec": "payments.yaml",
                "source": {"ref": "tests.edge_agent_kit:PatternSource", "args": {"pattern": [0]}},
            }
        ],
    }


def load(tmp_path: Path, data: dict[str, Any]) -> AgentSettings:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return AgentSettings.load(path)


class TestResidencyConfig:
    def test_the_section_loads_with_paths_relative_to_the_file(
        self, tmp_path: Path, config: dict[str, Any]
    ) -> None:
        config["residency"] = {
            "policy": "policy.yaml",
            "store_labels": STORE_DE,
            "salt_file": "salt",
        }
        settings = load(tmp_path, config)
        assert settings.residency is not None
        assert settings.residency.policy == tmp_path / "policy.yaml"
        plans, salt = residency_plans(settings, [PipelineSpec.from_dict(spec_data())])
        plan = plans["payments"]
        assert plan is not None and (plan.dropped, plan.hashed) == (("iban",), ("operator",))
        assert salt == SALT

    @pytest.mark.parametrize(
        ("change", "words"),
        [
            ({"salt_file": "short"}, "holds 5 bytes; write at least 16 random bytes"),
            ({"policy": "missing.yaml"}, "no such policy file"),
            ({"store_labels": {"jurisdiction": "DE"}}, "not domain-qualified"),
        ],
    )
    def test_a_bad_section_is_one_clear_config_error(
        self, tmp_path: Path, config: dict[str, Any], change: dict[str, Any], words: str
    ) -> None:
        (tmp_path / "short").write_bytes(b"12345")
        section = {"policy": "policy.yaml", "store_labels": STORE_DE, "salt_file": "salt"}
        config["residency"] = {**section, **change}
        with pytest.raises(ConfigError, match="residency") as info:
            load(tmp_path, config)
        assert words in str(info.value)

    def test_fields_above_the_pipeline_class_without_a_policy_fail_closed(
        self, tmp_path: Path, config: dict[str, Any]
    ) -> None:
        with pytest.raises(ConfigError) as info:
            EdgeAgent(load(tmp_path, config))
        message = str(info.value)
        assert "uplink cannot start" in message
        assert "iban (restricted), operator (confidential)" in message
        assert "add a `residency:` section" in message

    def test_without_fields_above_its_class_a_pipeline_needs_no_policy(
        self, tmp_path: Path, config: dict[str, Any]
    ) -> None:
        (tmp_path / "payments.yaml").write_text(
            yaml.safe_dump(spec_data(fields={"shift": "internal"})), encoding="utf-8"
        )
        spec = PipelineSpec.from_dict(spec_data(fields={"shift": "internal"}))
        plans, salt = residency_plans(load(tmp_path, config), [spec])
        assert plans == {"payments": None} and salt is None
