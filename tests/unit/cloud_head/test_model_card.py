"""The model card shows what the gate judged on: the reference and the edge slice apart.

``render_model_card`` is a pure function of a lineage (``model_lineage``'s mapping); the
export with its registry and audit log is tested in test_audit.py.
"""

from __future__ import annotations

from typing import Any

from cloud_head.model_card import render_model_card

CUT_NS = 1_800_000_000 * 10**9


def lineage(gate: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {
        "pipeline": "digits-inspection",
        "version": "v3",
        "tenant": "acme",
        "model": "digits-cnn",
        "status": "canary",
        "created_at": "2027-01-15T08:00:00Z",
        "exported_at": "2027-01-15T09:00:00Z",
        "parent": "v2",
        "code_version": "git:abc123",
        "intended_use": None,
        "data": {
            "store_partitions": ["2027-01-15"],
            "store_rows": 1500,
            "trained_on_edge_samples": 1180,
            "holdout_edge_samples": 320,
        }
        | data,
        "training": {"reason": "drift", "checkpoint": None, "metrics": {}, "ray": None},
        "gate": gate,
        "artifact": {
            "sha256": "0" * 64,
            "size_bytes": 10,
            "signature": "1" * 128,
            "key_fingerprint": None,
        },
        "rollout_history": [],
        "audit": {"log": "absent", "records": []},
    }


GATE = {
    "passed": True,
    "candidate_score": 0.9615,
    "current_score": 0.9,
    "margin": 0.0,
    "gain": 0.0615,
    "reason": "passes",
    "holdout_size": 260,
    "parts": {
        "reference": {"size": 200, "candidate_score": 0.98, "current_score": 0.975},
        "edge": {"size": 60, "candidate_score": 0.9, "current_score": 0.65},
    },
    "edge_per_node": {"cam-1": 40, "cam-7": 20},
}


class TestGateScores:
    def test_the_card_shows_the_reference_and_the_edge_slice_apart(self) -> None:
        card = render_model_card(
            lineage(
                GATE,
                {
                    "gate_edge_slice": {"cam-1": 40, "cam-7": 20},
                    "holdout_rule": {"block_s": 10.0, "every": 5, "gate_per_node": 200},
                    "training_cut": {"cam-1": {"captured_at_ns": CUT_NS, "seq": 4711}},
                },
            )
        )

        assert "| Reference holdout | 200 | 0.9800 | 0.9750 |" in card
        assert "| Edge slice (held out by time) | 60 | 0.9000 | 0.6500 |" in card
        assert "Edge slice per node: cam-1 40, cam-7 20." in card
        assert "| cam-1 | 2027-01-15T08:00:00Z | 4711 |" in card
        assert "one block in 5 of 10.0 s of each node's capture time held out" in card

    def test_a_card_of_a_version_gated_before_parts_has_no_parts_table(self) -> None:
        old = {k: v for k, v in GATE.items() if k not in ("parts", "edge_per_node")}

        card = render_model_card(lineage(old, {}))

        assert "| Holdout size | 260 |" in card
        assert "Edge slice" not in card and "Training cut per node" not in card
