"""The model registry's behaviour, the same on SQLite and on PostgreSQL, and its URL.

Every behaviour test takes ``registry_url`` and runs twice: on SQLite (the default file
under the root) and on a fresh database of a real PostgreSQL server (those cases are
marked ``integration``; ``-m 'not integration'`` leaves SQLite only).
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_head._database import mask_password, parse_url
from cloud_head.paths import REGISTRY_URL_ENV, HeadPaths
from cloud_head.registry import ModelRegistry, ModelVersion
from continuum.errors import ConfigError, NotFoundError

TENANT = "acme"
PIPELINE = "digits-inspection"


def no_signature(model: str, version: str, digest: str) -> str:
    return "ab" * 64


def register(
    registry: ModelRegistry,
    artifact: Path,
    *,
    tenant: str = TENANT,
    pipeline: str = PIPELINE,
    sign: Any = no_signature,
    **fields: Any,
) -> ModelVersion:
    """Register ``artifact`` with test metadata; ``fields`` override it."""
    metadata: dict[str, Any] = {
        "parent": None,
        "code_version": "git:test",
        "metrics": {},
        "gate": {},
        "lineage": {},
    }
    metadata.update(fields)
    return registry.register(tenant, pipeline, "digits-cnn", artifact, sign=sign, **metadata)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"model bytes")
    return path


@pytest.fixture
def registry(tmp_path: Path, registry_url: str | None) -> Iterator[ModelRegistry]:
    registry = ModelRegistry(tmp_path / "registry", url=registry_url)
    try:
        yield registry
    finally:
        registry.close()


class TestRegister:
    def test_versions_are_numbered_from_one_per_pipeline(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        numbers = [register(registry, artifact).version for _ in range(3)]
        other = register(registry, artifact, pipeline="lab-forms")
        elsewhere = register(registry, artifact, tenant="medica")
        assert numbers == ["v1", "v2", "v3"]
        assert (other.version, elsewhere.version) == ("v1", "v1")

    def test_the_artifact_is_copied_under_its_digest_and_signed_for_its_version(
        self, registry: ModelRegistry, artifact: Path, tmp_path: Path
    ) -> None:
        register(registry, artifact)
        asked: list[tuple[str, str, str]] = []

        def sign(model: str, version: str, digest: str) -> str:
            asked.append((model, version, digest))
            return "cd" * 64

        version = register(registry, artifact, sign=sign)
        assert asked == [("digits-cnn", "v2", version.sha256)]
        assert version.signature == "cd" * 64
        assert version.artifact_path.parent == tmp_path / "registry" / "artifacts" / TENANT / (
            PIPELINE
        )
        assert version.artifact_path.name == f"v2-{version.sha256[:12]}.onnx"
        assert version.artifact_path.read_bytes() == b"model bytes"
        assert version.size_bytes == len(b"model bytes")

    def test_the_record_reads_back_as_written(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        before = time.time()
        written = register(
            registry,
            artifact,
            parent="v0",
            metrics={"train_accuracy": 0.9731},
            gate={"passed": True, "candidate_score": 0.9312, "current_score": None},
            lineage={"store_rows": 1234, "store_partitions": ["2026-11-21"]},
            status="canary",
        )
        read = registry.get(TENANT, PIPELINE, "v1")
        assert read == written
        assert (read.parent, read.code_version, read.status) == ("v0", "git:test", "canary")
        assert read.gate == {"passed": True, "candidate_score": 0.9312, "current_score": None}
        assert read.lineage["store_partitions"] == ["2026-11-21"]
        # Double precision: a single-precision column would be off by minutes at today's epoch.
        assert before - 0.01 <= read.created_at <= time.time() + 0.01

    def test_a_failed_signature_records_nothing(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        def refuse(model: str, version: str, digest: str) -> str:
            raise RuntimeError("signing key unavailable")

        with pytest.raises(RuntimeError, match="signing key"):
            register(registry, artifact, sign=refuse)
        assert registry.list(TENANT) == []
        assert register(registry, artifact).version == "v1"

    def test_a_missing_artifact_is_not_found(self, registry: ModelRegistry, tmp_path: Path) -> None:
        with pytest.raises(NotFoundError, match="does not exist"):
            register(registry, tmp_path / "nope.onnx")

    def test_threads_sharing_a_registry_get_consecutive_numbers(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(3):
                    register(registry, artifact)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, name=f"register-{i}") for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert [v.number for v in registry.list(TENANT, PIPELINE)] == list(range(1, 13))


class TestLookup:
    def test_an_unknown_version_names_the_registered_ones(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        register(registry, artifact)
        register(registry, artifact)
        with pytest.raises(NotFoundError, match=r"registered: v1, v2"):
            registry.get(TENANT, PIPELINE, "v9")

    def test_a_tenant_lists_only_its_own_versions_oldest_first(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        register(registry, artifact, pipeline="lab-forms")
        register(registry, artifact)
        register(registry, artifact)
        register(registry, artifact, tenant="medica")
        listed = [(v.pipeline, v.version) for v in registry.list(TENANT)]
        assert listed == [(PIPELINE, "v1"), (PIPELINE, "v2"), ("lab-forms", "v1")]
        assert [v.tenant for v in registry.list("medica")] == ["medica"]
        assert [v.version for v in registry.list(TENANT, "lab-forms")] == ["v1"]

    def test_a_reopened_registry_has_the_same_versions(
        self, tmp_path: Path, registry_url: str | None, artifact: Path
    ) -> None:
        first = ModelRegistry(tmp_path / "registry", url=registry_url)
        register(first, artifact)
        first.set_current(TENANT, PIPELINE, "v1", "first")
        first.close()
        again = ModelRegistry(tmp_path / "registry", url=registry_url)
        try:
            current = again.current(TENANT, PIPELINE)
            assert current is not None and current.version == "v1"
            assert register(again, artifact).version == "v2"
        finally:
            again.close()


class TestCurrent:
    def test_there_is_none_before_a_promotion(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        register(registry, artifact)
        assert registry.current(TENANT, PIPELINE) is None

    def test_a_promotion_retires_the_previous_current(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        for _ in range(3):
            register(registry, artifact)
        registry.set_current(TENANT, PIPELINE, "v1", "first model")
        chosen = registry.set_current(TENANT, PIPELINE, "v2", "gate passed")
        current = registry.current(TENANT, PIPELINE)
        assert chosen.version == "v2"
        assert current is not None and current.version == "v2"
        statuses = {v.version: v.status for v in registry.list(TENANT, PIPELINE)}
        assert statuses == {"v1": "retired", "v2": "current", "v3": "registered"}

    def test_promoting_an_unknown_version_changes_nothing(
        self, registry: ModelRegistry, artifact: Path
    ) -> None:
        register(registry, artifact)
        registry.set_current(TENANT, PIPELINE, "v1", "first")
        with pytest.raises(NotFoundError):
            registry.set_current(TENANT, PIPELINE, "v7", "typo")
        current = registry.current(TENANT, PIPELINE)
        assert current is not None and current.version == "v1"

    def test_a_rollout_status_is_recorded(self, registry: ModelRegistry, artifact: Path) -> None:
        register(registry, artifact)
        registry.set_status(TENANT, PIPELINE, "v1", "rolled_back")
        assert registry.get(TENANT, PIPELINE, "v1").status == "rolled_back"


class TestURL:
    def test_a_sqlite_url_puts_the_metadata_there_and_the_artifacts_under_the_root(
        self, tmp_path: Path, artifact: Path
    ) -> None:
        database = tmp_path / "elsewhere" / "models.sqlite3"
        registry = ModelRegistry(tmp_path / "registry", url=f"sqlite://{database}")
        try:
            version = register(registry, artifact)
        finally:
            registry.close()
        assert database.is_file()
        assert not (tmp_path / "registry" / "registry.sqlite3").exists()
        assert version.artifact_path.is_relative_to(tmp_path / "registry" / "artifacts")

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("mysql://admin:s3cret@db:3306/models", "unsupported scheme 'mysql'"),
            ("/var/lib/continuum/registry.sqlite3", "has no scheme"),
            ("postgresql://admin:s3cret@db:port/models", "malformed"),
            ("postgresql://admin:s3cret@db:5432/", "names no database"),
            ("postgresql://admin:s3cret@/models", "names no server host"),
            ("sqlite://relative/models.sqlite3", "absolute file path"),
        ],
    )
    def test_a_bad_url_is_refused_naming_it_without_its_password(
        self, tmp_path: Path, url: str, problem: str
    ) -> None:
        with pytest.raises(ConfigError) as refused:
            ModelRegistry(tmp_path / "registry", url=url)
        message = str(refused.value)
        assert problem in message
        assert "s3cret" not in message
        assert (
            "sqlite:///" in message and "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in message
        )
        if "s3cret" in url:
            assert mask_password(url) in message and "admin:***@" in message

    def test_a_password_in_a_query_parameter_is_masked_too(self) -> None:
        url = "postgresql://db:5432/models?sslmode=require&password=s3cret"
        assert mask_password(url) == "postgresql://db:5432/models?sslmode=require&password=***"
        assert parse_url(url).database == "models"

    def test_postgres_without_its_driver_says_what_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "psycopg", None)  # what a missing package looks like
        with pytest.raises(ConfigError, match=r"pip install 'psycopg\[binary\]'") as refused:
            ModelRegistry(tmp_path / "registry", url="postgres://u:s3cret@db/models")
        assert "s3cret" not in str(refused.value)


class TestHeadPaths:
    def test_the_url_defaults_to_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        url = "postgresql://continuum:s3cret@db.internal:5432/registry"
        monkeypatch.setenv(REGISTRY_URL_ENV, url)
        assert HeadPaths(Path("/state")).registry_url == url
        assert HeadPaths(Path("/state"), registry_url=None).registry_url is None

    def test_unset_or_empty_means_sqlite_under_the_root(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifact: Path
    ) -> None:
        monkeypatch.setenv(REGISTRY_URL_ENV, "")
        paths = HeadPaths(tmp_path / "cloud")
        assert paths.registry_url is None
        registry = paths.open_registry()
        register(registry, artifact)
        registry.close()
        assert (tmp_path / "cloud" / "registry" / "registry.sqlite3").is_file()

    def test_a_bad_url_fails_when_the_paths_are_made(self) -> None:
        with pytest.raises(ConfigError, match="unsupported scheme"):
            HeadPaths(Path("/state"), registry_url="mongodb://db/models")

    def test_it_crosses_ray_pickled_and_never_shows_the_password(self) -> None:
        paths = HeadPaths(Path("/state"), registry_url="postgresql://u:s3cret@db:5432/models")
        assert pickle.loads(pickle.dumps(paths)) == paths
        assert "s3cret" not in repr(paths)
