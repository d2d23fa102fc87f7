"""The operator's read-only commands on real stores: ``models list|show`` and ``fleet``.

The ``models`` tests run on each registry database (``registry_url``): SQLite under
``--root``, then PostgreSQL named by ``--registry-url`` or ``CONTINUUM_REGISTRY_URL``.
Every command names its tenant and pipeline: a production head has no demo defaults.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_head.fleet import FleetRegistry
from cloud_head.paths import REGISTRY_URL_ENV
from cloud_head.registry import ModelRegistry
from continuum.cli import main
from continuum.labels import SITE, TIER
from continuum.wire import topics
from continuum.wire.messages import NodeStatus

#: The tenant and pipeline the registry fixtures fill.
PIPELINE = ["--tenant", "acme", "--pipeline", "digits-inspection"]


def register_two_versions(registry: ModelRegistry, tmp_path: Path) -> None:
    """Register v1 and v2 (current) of acme's digits-inspection."""
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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cloud state root with two registered versions and two nodes, one offline."""
    register_two_versions(ModelRegistry(tmp_path / "registry"), tmp_path)
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


@pytest.fixture
def registry_args(tmp_path: Path, registry_url: str | None) -> list[str]:
    """The arguments that point ``models`` at a registry with two versions, per database."""
    register_two_versions(ModelRegistry(tmp_path / "registry", url=registry_url), tmp_path)
    url_args = [] if registry_url is None else ["--registry-url", registry_url]
    return ["--root", str(tmp_path), *url_args, *PIPELINE]


class TestModelsList:
    def test_lists_every_version_with_status_and_gate(
        self, registry_args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "list", *registry_args]) == 0
        out = capsys.readouterr().out
        assert "v1       registered" in out
        assert "v2       current" in out
        assert "passed: 0.920" in out

    def test_the_registry_url_may_come_from_the_environment(
        self,
        registry_args: list[str],
        registry_url: str | None,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        sqlite_file = tmp_path / "registry" / "registry.sqlite3"
        monkeypatch.setenv(REGISTRY_URL_ENV, registry_url or f"sqlite://{sqlite_file}")
        assert main(["models", "list", "--root", str(tmp_path), *PIPELINE]) == 0
        assert "v2       current" in capsys.readouterr().out
        assert sqlite_file.exists() == (registry_url is None)

    def test_a_bad_registry_url_is_named_without_its_password(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = "mysql://admin:s3cret@db:3306/models"
        argv = ["models", "list", "--root", str(tmp_path), "--registry-url", url, *PIPELINE]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "mysql://admin:***@db:3306/models" in err and "s3cret" not in err

    def test_a_missing_root_says_where_to_point(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "list", "--root", str(tmp_path / "nope"), *PIPELINE]) == 2
        assert "pass --root" in capsys.readouterr().err

    def test_json_prints_one_document_with_stable_keys(
        self, registry_args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "list", *registry_args, "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert (document["tenant"], document["pipeline"]) == ("acme", "digits-inspection")
        assert [v["version"] for v in document["versions"]] == ["v1", "v2"]
        assert set(document["versions"][1]) == {
            "version",
            "model",
            "status",
            "parent",
            "sha256",
            "size_bytes",
            "code_version",
            "created_at",
            "gate",
        }
        assert (document["versions"][1]["status"], document["versions"][1]["parent"]) == (
            "current",
            "v1",
        )
        assert document["versions"][1]["gate"]["candidate_score"] == pytest.approx(0.92)

    def test_json_of_no_versions_is_an_empty_list(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ModelRegistry(tmp_path / "registry").close()
        argv = ["models", "list", "--root", str(tmp_path), *PIPELINE, "--json"]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["versions"] == []


class TestModelsShow:
    def test_prints_the_lineage_as_json(
        self, registry_args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "show", "v2", *registry_args]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["parent"] == "v1"
        assert record["lineage"] == {"store_rows": 20}

    def test_an_unknown_version_names_the_registered_ones(
        self, registry_args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["models", "show", "v9", *registry_args]) == 1
        assert "registered: v1, v2" in capsys.readouterr().err


class TestFleet:
    def test_lists_nodes_matching_the_selector(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["fleet", "--tenant", "acme", "--root", str(root), "--where", f"{SITE}=lux-2"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "cam-b" in out and "offline" in out
        assert "cam-a" not in out

    def test_json_prints_one_document_with_stable_keys(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["fleet", "--tenant", "acme", "--root", str(root), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["tenant"] == "acme"
        nodes = {n["node"]: n for n in document["nodes"]}
        assert set(nodes) == {"cam-a", "cam-b"}
        assert set(nodes["cam-a"]) == {
            "node",
            "online",
            "last_seen",
            "labels",
            "pipelines",
            "models",
            "refused",
        }
        assert (nodes["cam-a"]["online"], nodes["cam-b"]["online"]) == (True, False)
        assert nodes["cam-b"]["labels"] == {TIER: "edge", SITE: "lux-2"}
        assert nodes["cam-a"]["pipelines"] == ["digits-inspection"]
        assert nodes["cam-a"]["refused"] is None

    def test_json_of_no_match_is_an_empty_list(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["fleet", "--tenant", "acme", "--root", str(root), "--json"]
        assert main([*argv, "--where", f"{SITE}=lux-9"]) == 0
        assert json.loads(capsys.readouterr().out) == {"tenant": "acme", "nodes": []}

    def test_a_bare_label_key_names_the_prefixed_one(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["fleet", "--tenant", "acme", "--root", str(root), "--where", "tier=edge"]
        assert main(argv) == 2
        assert "continuum.io/tier" in capsys.readouterr().err


class TestFleetRemove:
    def test_remove_refuses_without_yes_and_removes_nothing(
        self, root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["fleet", "remove", "cam-a", "--tenant", "acme", "--root", str(root)]
        argv += ["--address", "127.0.0.1:1"]
        assert main(argv) == 2
        assert "pass --yes" in capsys.readouterr().err
        with FleetRegistry("acme", root / "state" / "fleet-acme.sqlite3") as fleet:
            assert [n.node for n in fleet.nodes()] == ["cam-a", "cam-b"]

    def test_options_given_before_the_action_stand(self) -> None:
        from continuum.cli import build_parser

        argv = ["fleet", "--tenant", "medica", "--root", "/r", "remove", "cam-a", "--address", "a"]
        args = build_parser().parse_args(argv)
        assert (args.tenant, str(args.root), args.node) == ("medica", "/r", "cam-a")

    def test_help_states_the_telemetry_retention(self, capsys: pytest.CaptureFixture[str]) -> None:
        from cloud_head.fleet import TELEMETRY_RETENTION_S

        assert main(["fleet", "--help"]) == 0
        days = TELEMETRY_RETENTION_S / 86400
        assert f"Telemetry history is kept {days:g} days" in capsys.readouterr().out
