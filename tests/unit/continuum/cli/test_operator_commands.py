"""The operator's read-only commands on real stores: ``models list|show`` and ``fleet``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_head.fleet import FleetRegistry
from cloud_head.registry import ModelRegistry
from continuum.cli import main
from continuum.labels import SITE, TIER
from continuum.wire import topics
from continuum.wire.messages import NodeStatus


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cloud state root with two registered versions and two nodes, one offline."""
    registry = ModelRegistry(tmp_path / "registry")
    artifact = tmp_path / "model.onnx"
    for number in (1, 2):
        artifact.write_bytes(b"model bytes %d" % number)
        registry.register(
            "acme",
            "digits-inspection",
            "digits-cnn",
            artifact,
            sign=lambda model, version, digest: "ab" * 64,
            parent=None if number == 1 else "v1",
            code_version="test",
            metrics={},
            gate={"passed": True, "candidate_score": 0.9 + number / 100, "current_score": None},
            lineage={"store_rows": 10 * number},
        )
    registry.set_current("acme", "digits-inspection", "v2", "test")
    registry.close()
    fleet = FleetRegistry("acme", tmp_path / "state" / "fleet-acme.sqlite3")
    for node, site, online in (("cam-a", "lux-1", True), ("cam-b", "lux-2", False)):
        status = NodeStatus(
            node=node,
            tenant="acme",
            online=online,
            labels={TIER: "edge", SITE: site},
            agent_version="test",
            pipelines=["digits-inspection"],
            ts=time.time(),
        )
        fleet.handle(topics.node_status("acme", node), status.to_payload())
    fleet.close()
    return tmp_path


class TestModelsList:
    def test_lists_every_version_with_status_and_gate(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "list", "--root", str(root)]) == 0
        out = capsys.readouterr().out
        assert "v1       registered" in out
        assert "v2       current" in out
        assert "passed: 0.920" in out

    def test_a_missing_root_says_where_to_point(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "list", "--root", str(tmp_path / "nope")]) == 2
        assert "pass --root" in capsys.readouterr().err


class TestModelsShow:
    def test_prints_the_lineage_as_json(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "show", "v2", "--root", str(root)]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["parent"] == "v1"
        assert record["lineage"] == {"store_rows": 20}

    def test_an_unknown_version_names_the_registered_ones(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "show", "v9", "--root", str(root)]) == 1
        assert "registered: v1, v2" in capsys.readouterr().err


class TestFleet:
    def test_lists_nodes_matching_the_selector(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["fleet", "--root", str(root), "--where", f"{SITE}=lux-2"]) == 0
        out = capsys.readouterr().out
        assert "cam-b" in out and "offline" in out
        assert "cam-a" not in out

    def test_a_bare_label_key_names_the_prefixed_one(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["fleet", "--root", str(root), "--where", "tier=edge"]) == 2
        assert "continuum.io/tier" in capsys.readouterr().err
