"""Session fixtures for the whole suite: a real mosquitto, a real local Ray cluster, a real
PostgreSQL, S3-compatible storage, the gpu skip.

Each starts only when a test asks for it, so ``tests/unit`` needs none but PostgreSQL and
S3 (for the cases of the registry's and the sample store's tests that run on them, marked
integration).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from cloud_head.paths import REGISTRY_URL_ENV
from continuum.embedded import EmbeddedBroker, LocalRayCluster
from tests.postgres_server import PostgresServer, find_postgres_bin
from tests.s3_server import S3Server, aws_free_environ, child_uri, moto_missing

#: The Ray namespace the test process joins; services under test run as actors in it.
RAY_TEST_NAMESPACE = "continuum-tests"
#: An ``s3://`` URI of a real S3 or MinIO prefix to test object storage on instead of moto.
S3_URI_ENV = "CONTINUUM_TEST_S3_URI"


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Yield one mosquitto on a free loopback port, shared by the session.

    A test that stops or kills it must start it again (``restart()``) before it
    returns; tests that want to kill a broker should take ``private_mqtt_broker``.
    """
    broker = EmbeddedBroker(tmp_path_factory.mktemp("mqtt-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_mqtt_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """Yield a mosquitto of this test's own (about 50 ms), free to stop, kill and restart."""
    broker = EmbeddedBroker(tmp_path / "mqtt-broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _no_operator_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the operator's ``CONTINUUM_REGISTRY_URL`` away: no test writes to a real registry.

    Every ``CONTINUUM_CLOUD_*`` setting goes too, so no test reads the operator's cloud head.
    """
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    for name in [n for n in os.environ if n.startswith("CONTINUUM_CLOUD_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Yield one PostgreSQL server on a free loopback port, shared by the session.

    Its superuser ``continuum`` needs no password. A test that restarts it must leave it
    running; tests take a database of their own (``postgres_database``). Fails, saying
    how to install it, where the server's binaries are missing.
    """
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.fail(
            "needs PostgreSQL's server binaries (initdb, pg_ctl): apt-get install postgresql "
            "(scripts/bootstrap.sh test does it)"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session's PostgreSQL (database ``postgres``, user ``continuum``)."""
    return postgres_server.url()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> str:
    """The URL of an empty database of this test's own on the session's PostgreSQL."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def s3_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the ``s3://`` URI of a prefix on S3-compatible storage, shared by the session.

    ``CONTINUUM_TEST_S3_URI`` when set (a real S3 or MinIO, used as it is); otherwise moto's
    S3 server on a free loopback port (``tests/s3_server.py``), with test credentials and
    endpoint in the URI, and this process's AWS settings set aside while it runs. Tests
    write under a prefix of their own (``tests.s3_server.child_uri``). Fails, saying how
    to install it, where moto's server is missing.
    """
    real = os.environ.get(S3_URI_ENV)
    if real:
        yield real
        return
    missing = moto_missing()
    if missing is not None:
        pytest.fail(f"{missing} (scripts/bootstrap.sh test does it), or set {S3_URI_ENV}")
    with pytest.MonkeyPatch.context() as env:
        # Nothing may reach a real account: no AWS credentials, profile, endpoint or
        # instance metadata for pyarrow's S3 client, in this process or the server's.
        clean = aws_free_environ()
        for name in set(os.environ) - set(clean):
            env.delenv(name)
        for name, value in clean.items():
            if os.environ.get(name) != value:
                env.setenv(name, value)
        server = S3Server(tmp_path_factory.mktemp("s3-server"))
        try:
            server.start()
            yield server.uri("samples")
        finally:
            server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def registry_url(request: pytest.FixtureRequest) -> str | None:
    """The model registry's database, once per dialect: None (SQLite, the default), then an
    empty database of this test's own on the session's PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A sample store root, once per kind of storage: a local folder, then a prefix of this
    test's own on the session's S3 (``s3_uri``: no atomic rename there), deleted afterwards.

    ``SampleStore(store_root)`` opens it as an operator would; ``child_uri(store_root, name)``
    is a second root beside it.
    """
    if request.param == "local":
        yield str(tmp_path / "samples")
        return
    import pyarrow.fs as pafs  # only the S3 cases need it

    root = child_uri(request.getfixturevalue("s3_uri"), uuid.uuid4().hex)
    yield root
    filesystem, path = pafs.FileSystem.from_uri(root)
    with contextlib.suppress(FileNotFoundError):  # a test that wrote nothing
        filesystem.delete_dir(path)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """Yield a local Ray cluster this process is connected to (namespace ``continuum-tests``).

    Head: ``continuum.io/tier=cloud``, 2 CPUs.  One worker node:
    ``continuum.io/tier=edge``, ``continuum.io/site=lux-1``, 1 CPU.  No dashboard.
    """
    # Imported here: pipelines.demo needs the cloud extra, which a 3.10 edge-only venv
    # (scripts/bootstrap.sh test) lacks, and this conftest loads for every test.
    from pipelines.demo._tenants import CLOUD_LABELS, EDGE_NODE_LABELS

    cluster = LocalRayCluster(
        tmp_path_factory.mktemp("ray-cluster"),
        # The demo's topology: a central pool in Frankfurt, an edge site in Luxembourg.
        head_labels=CLOUD_LABELS,
        edge_nodes=[EDGE_NODE_LABELS],
        dashboard=False,
        env={"PYTHONPATH": _test_python_path()},
    )
    try:
        cluster.start()
        # The driver's own log lines would interleave with pytest's output.
        cluster.connect(RAY_TEST_NAMESPACE, log_to_driver=False)
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def own_ray_connection(request: pytest.FixtureRequest) -> Iterator[None]:
    """Disconnect from the suite's session cluster while a test or a module connects to a
    cluster of its own (a process holds one Ray connection), and connect back to it afterwards."""
    import ray

    session = request.getfixturevalue("ray_cluster") if ray.is_initialized() else None
    if session is not None:
        ray.shutdown()
    try:
        yield
    finally:
        ray.shutdown()
        if session is not None:
            session.connect(RAY_TEST_NAMESPACE, log_to_driver=False)


def _test_python_path() -> str:
    """Return a PYTHONPATH under which Ray workers import test modules as pytest did.

    Ray workers unpickle a remote function defined in a test module by importing that
    module by name.  With ``--import-mode=importlib`` (pyproject) the name is
    ``tests.integration.x.test_y``, importable from the repository root; with pytest's
    prepend mode it is ``test_y``, importable from the folder pytest put on sys.path.
    """
    tests_root = Path(__file__).resolve().parent
    test_dirs = [p for p in sys.path if p and Path(p).resolve().is_relative_to(tests_root)]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([str(tests_root.parent), *test_dirs, *inherited]))


@cache
def _gpu_missing() -> str | None:
    """Return why TensorRT tests cannot run here, or None when they can."""
    missing = [name for name in ("tensorrt", "pycuda") if importlib.util.find_spec(name) is None]
    has_gpu = Path("/dev/nvidia0").exists()
    smi = shutil.which("nvidia-smi")
    if not has_gpu and smi is not None:
        try:
            listed = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=10, check=False
            )
            has_gpu = listed.returncode == 0 and "GPU" in listed.stdout
        except (OSError, subprocess.TimeoutExpired):
            has_gpu = False
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        has_gpu = False
    if not has_gpu:
        missing.insert(0, "an NVIDIA GPU")
    if not missing:
        return None
    return f"needs an NVIDIA GPU with tensorrt and pycuda; missing: {', '.join(missing)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` unless an NVIDIA GPU, tensorrt and pycuda are all present."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_missing()
    if reason is None:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
