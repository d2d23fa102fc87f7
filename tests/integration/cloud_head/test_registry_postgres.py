"""The model registry on a real PostgreSQL: several writers, a server restart, a server away.

Several head processes share one PostgreSQL registry; here each is a ``ModelRegistry`` of its
own (its own connection, so its own server session, as a process would have).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from cloud_head.paths import HeadPaths
from cloud_head.registry import ModelRegistry
from continuum.embedded._process import free_port
from continuum.errors import ConfigError, NotReadyError
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.integration

TENANT = "acme"
PIPELINE = "digits-inspection"


def slow_signature(model: str, version: str, digest: str) -> str:
    """Sign between reading the highest number and writing the next: widens any race."""
    threading.Event().wait(0.005)
    return "ab" * 64


def register(registry: ModelRegistry, artifact: Path) -> str:
    return registry.register(
        TENANT,
        PIPELINE,
        "digits-cnn",
        artifact,
        sign=slow_signature,
        parent=None,
        code_version="git:test",
        metrics={},
        gate={},
        lineage={},
    ).version


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"model bytes")
    return path


class TestConcurrentHeads:
    def test_two_heads_registering_at_once_get_unique_consecutive_numbers(
        self, postgres_database: str, tmp_path: Path, artifact: Path
    ) -> None:
        # Shared artifacts directory, as heads sharing the database share a filesystem.
        heads = [ModelRegistry(tmp_path / "registry", url=postgres_database) for _ in range(2)]
        got: list[str] = []
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def work(head: ModelRegistry) -> None:
            try:
                start.wait(10)
                for _ in range(4):
                    version = register(head, artifact)
                    with lock:
                        got.append(version)
            except BaseException as error:
                errors.append(error)

        lock = threading.Lock()
        threads = [
            threading.Thread(target=work, args=(heads[i % 2],), name=f"head-{i % 2}-{i}")
            for i in range(6)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == []
            assert sorted(got, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, 25)]
            listed = heads[1].list(TENANT, PIPELINE)
            assert [v.number for v in listed] == list(range(1, 25))
            assert all(v.artifact_path.is_file() for v in listed)
        finally:
            for head in heads:
                head.close()

    def test_two_heads_promoting_at_once_leave_one_current_version(
        self, postgres_database: str, tmp_path: Path, artifact: Path
    ) -> None:
        heads = [ModelRegistry(tmp_path / "registry", url=postgres_database) for _ in range(2)]
        try:
            for _ in range(4):
                register(heads[0], artifact)
            broken: list[str] = []
            for round_ in range(15):
                # Each round both heads promote a different version at the same moment.
                start = threading.Barrier(2)
                picks = (f"v{1 + round_ % 2}", f"v{3 + round_ % 2}")

                def promote(head: ModelRegistry, version: str, start: threading.Barrier) -> None:
                    start.wait(10)
                    head.set_current(TENANT, PIPELINE, version, "test")

                threads = [
                    threading.Thread(target=promote, args=(head, version, start))
                    for head, version in zip(heads, picks, strict=True)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                current = heads[0].current(TENANT, PIPELINE)
                marked = [
                    v.version for v in heads[0].list(TENANT, PIPELINE) if v.status == "current"
                ]
                if current is None or marked != [current.version]:
                    broken.append(f"round {round_}: current {current}, marked current {marked}")
            assert broken == []
        finally:
            for head in heads:
                head.close()


class TestServerRestart:
    def test_the_registry_works_again_after_the_server_restarts(
        self,
        postgres_server: PostgresServer,
        postgres_database: str,
        tmp_path: Path,
        artifact: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        registry = ModelRegistry(tmp_path / "registry", url=postgres_database)
        try:
            register(registry, artifact)
            postgres_server.restart()  # drops every connection, the registry's too
            assert [v.version for v in registry.list(TENANT)] == ["v1"]
            postgres_server.restart()
            assert register(registry, artifact) == "v2"
        finally:
            registry.close()
        assert "reconnecting" in caplog.text


class TestUnreachable:
    def test_a_server_that_is_not_there_is_not_ready_naming_its_address(
        self, tmp_path: Path
    ) -> None:
        port = free_port()
        url = f"postgresql://continuum:s3cret@127.0.0.1:{port}/registry"
        with pytest.raises(NotReadyError) as refused:
            ModelRegistry(tmp_path / "registry", url=url)
        message = str(refused.value)
        assert f"127.0.0.1:{port}" in message
        assert "Connection refused" in message
        assert "s3cret" not in message and "continuum:***@" in message

    def test_a_missing_database_is_named(
        self, postgres_server: PostgresServer, tmp_path: Path
    ) -> None:
        with pytest.raises(NotReadyError, match='database "nowhere" does not exist'):
            ModelRegistry(tmp_path / "registry", url=postgres_server.url("nowhere"))


class TestHeadPaths:
    def test_every_opener_of_the_paths_shares_the_postgres_registry(
        self, postgres_database: str, tmp_path: Path, artifact: Path
    ) -> None:
        paths = HeadPaths(tmp_path / "cloud", registry_url=postgres_database)
        writer, reader = paths.open_registry(), paths.open_registry()
        try:
            register(writer, artifact)
            assert [v.version for v in reader.list(TENANT)] == ["v1"]
        finally:
            writer.close()
            reader.close()
        assert not (paths.registry / "registry.sqlite3").exists()
        assert (paths.registry / "artifacts" / TENANT / PIPELINE).is_dir()


def as_role(url: str, role: str) -> str:
    """``url`` (trust authentication, user ``continuum``) for another login role."""
    return url.replace("postgresql://continuum@", f"postgresql://{role}@", 1)


class TestLeastPrivilege:
    """A head may run as a role that can read and write the registry's rows, nothing more."""

    @staticmethod
    def make_role(superuser_url: str, *, grant: bool) -> str:
        import psycopg

        role = f"head_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(superuser_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN")
            # PostgreSQL 15 on: only the schema's owner may create in "public"; said anyway.
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            if grant:
                conn.execute(
                    f"GRANT SELECT, INSERT, UPDATE ON model_versions, current_versions TO {role}"
                )
        return role

    def test_a_role_without_create_opens_an_existing_registry_and_registers(
        self, postgres_database: str, tmp_path: Path, artifact: Path
    ) -> None:
        ModelRegistry(tmp_path / "registry", url=postgres_database).close()  # made by an admin
        role = self.make_role(postgres_database, grant=True)

        registry = ModelRegistry(tmp_path / "registry", url=as_role(postgres_database, role))
        try:
            assert register(registry, artifact) == "v1"
            registry.set_current(TENANT, PIPELINE, "v1", reason="test")
            assert registry.current(TENANT, PIPELINE) is not None
        finally:
            registry.close()

    def test_a_role_that_may_not_create_the_tables_is_told_what_to_grant(
        self, postgres_database: str, tmp_path: Path
    ) -> None:
        role = self.make_role(postgres_database, grant=False)  # no tables yet

        with pytest.raises(ConfigError) as refused:
            ModelRegistry(tmp_path / "registry", url=as_role(postgres_database, role))
        message = str(refused.value)
        assert "permission denied" in message
        assert "grant it SELECT, INSERT and UPDATE" in message


class TestStatementTimeout:
    def test_a_write_stuck_behind_a_lock_fails_after_the_timeout(
        self,
        postgres_database: str,
        tmp_path: Path,
        artifact: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import psycopg

        import cloud_head._database as database

        monkeypatch.setattr(database, "STATEMENT_TIMEOUT_S", 1)
        registry = ModelRegistry(tmp_path / "registry", url=postgres_database)
        key = f"continuum/registry/{TENANT}/{PIPELINE}"
        try:
            with psycopg.connect(postgres_database, autocommit=True) as other:
                # Another session holds the pipeline's lock and never lets go (a stuck head).
                other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                started = time.monotonic()
                with pytest.raises(NotReadyError, match="statement timeout"):
                    register(registry, artifact)
                assert time.monotonic() - started < 10.0
            # Once the other session is gone, the registry goes on.
            assert register(registry, artifact) == "v1"
        finally:
            registry.close()
