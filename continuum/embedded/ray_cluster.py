"""A real multi-node Ray cluster on one machine: a head labelled cloud plus edge worker nodes.

Each node is one ``ray start --block`` process in its own session, so ``stop()``
ends exactly the processes this cluster started and never another Ray cluster
on the same machine.  Every Ray process gets an explicit ``RAY_AUTH_MODE``
(DESIGN.md §10); in token mode the token lives in the workdir, not in
``~/.ray``.  Production runs the Ray cluster launcher or KubeRay (``deploy/``).

A node that does not start is tried once more: on a busy machine (another cluster still
stopping) Ray's own start-up can give up (its raylet gets a fixed 30 s to register with the
GCS, "The current node timed out during startup") where a second try moments later works.
Each attempt is bounded by ``start_timeout_s``; a failed one is stopped with everything it
started before the next, and the retry is logged; the second failure names the node, the
address it was to start or join, how long it waited, and its log.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from continuum._fs import OWNER_ONLY, atomic_write
from continuum.embedded._process import (
    free_port,
    kill_sessions,
    port_accepts,
    signal_group,
    tail_lines,
)
from continuum.embedded._ray_node import (
    NodeProcess,
    NodeSpec,
    RayNodeInfo,
    check_labels,
    ray_start_args,
)
from continuum.errors import ConfigError, NotReadyError, OperationTimeoutError
from continuum.labels import SITE, TIER

__all__ = [
    "DEFAULT_EDGE_NODES",
    "DEFAULT_HEAD_LABELS",
    "MAX_TEMP_DIR_CHARS",
    "START_ATTEMPTS",
    "AuthMode",
    "LocalRayCluster",
    "RayNodeInfo",
    "check_labels",
    "find_ray_cli",
]

AuthMode = Literal["token", "disabled"]

log = logging.getLogger(__name__)

DEFAULT_HEAD_LABELS: Mapping[str, str] = {TIER: "cloud"}
DEFAULT_EDGE_NODES: Sequence[Mapping[str, str]] = ({TIER: "edge", SITE: "lux-1"},)

#: Worker processes a node may start at once (see ``_process_env``).
_STARTUP_CONCURRENCY = 16
#: ``ray start`` prints this once the node's processes run (``--log-style=record``).
_STARTED_MARKER = "Ray runtime started"
#: How many times a node's ``ray start`` is tried before ``start()`` fails.
START_ATTEMPTS = 2
#: Ray puts unix sockets at ``{temp_dir}/session_<date>_<time>_<us>_<pid>/sockets/plasma_store.N``;
#: that suffix is about 66 characters and Linux allows 107, so the temp dir must stay short.
MAX_TEMP_DIR_CHARS = 40


def find_ray_cli() -> str:
    """Return the path of the ``ray`` CLI of this interpreter's environment."""
    beside_python = Path(sys.executable).with_name("ray")
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("ray")
    if found:
        return found
    raise NotReadyError("the ray CLI was not found: pip install 'continuum[cloud]'")


class LocalRayCluster:
    """Start and stop a local Ray cluster: one head node and one worker node per edge label set.

    ``head_labels`` label the head (default ``continuum.io/tier=cloud``); each mapping
    in ``edge_nodes`` becomes one worker node with those labels.  The dashboard binds
    to 127.0.0.1; Ray replaces ``--node-ip-address=127.0.0.1`` with the machine's own IP
    and its GCS and raylets listen on all interfaces, which is why token auth is the
    default.  All nodes use free ports and share one short temp dir.
    ``env`` is added to every Ray process's environment (e.g. ``PYTHONPATH`` for code
    that tasks import by module name); ``edge_env[i]``, where given, only to edge node
    ``i``'s: what a node knows of its own site and no other node does, such as where its
    site's data lives (``CONTINUUM_SITE_DATA``).  Each node's ``ray start`` may take
    ``start_timeout_s`` (Ray alone allows its raylet 30 s) and is tried ``START_ATTEMPTS``
    times.  ``ray_cli`` is the ``ray`` executable to run (default: this environment's).
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        edge_nodes: Sequence[Mapping[str, str]] = DEFAULT_EDGE_NODES,
        head_labels: Mapping[str, str] = DEFAULT_HEAD_LABELS,
        dashboard: bool = False,
        auth_mode: AuthMode = "token",
        head_cpus: int = 2,
        edge_cpus: int = 1,
        object_store_bytes: int = 128 * 1024 * 1024,
        temp_dir: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        edge_env: Sequence[Mapping[str, str] | None] | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        ray_cli: Path | str | None = None,
    ) -> None:
        if auth_mode not in ("token", "disabled"):
            raise ConfigError(f"auth_mode must be 'token' or 'disabled', got {auth_mode!r}")
        if head_cpus < 0 or edge_cpus < 0:
            raise ConfigError("head_cpus and edge_cpus must be >= 0")
        if object_store_bytes < 80 * 1024 * 1024:
            # Ray refuses object stores under ~75 MiB.
            raise ConfigError(f"object_store_bytes must be >= 80 MiB, got {object_store_bytes}")
        self.workdir = Path(workdir)
        self.head_labels = check_labels(head_labels, "head_labels")
        self.edge_nodes = [
            check_labels(labels, f"edge_nodes[{index}]") for index, labels in enumerate(edge_nodes)
        ]
        self.dashboard = dashboard
        self.auth_mode: AuthMode = auth_mode
        self.head_cpus = head_cpus
        self.edge_cpus = edge_cpus
        self.object_store_bytes = object_store_bytes
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_env = dict(env or {})
        if edge_env is not None and len(edge_env) > len(self.edge_nodes):
            raise ConfigError(
                f"edge_env has {len(edge_env)} entries for {len(self.edge_nodes)} edge nodes; "
                "give at most one environment per edge node, in the same order"
            )
        self.edge_env = [dict(e or {}) for e in (edge_env or ())]
        self._ray_cli_arg = None if ray_cli is None else str(ray_cli)
        self._ray_cli = ""
        self._env: dict[str, str] = {}
        self._temp_dir_arg = Path(temp_dir) if temp_dir is not None else None
        if self._temp_dir_arg is not None:
            _check_temp_dir(self._temp_dir_arg)
        self._temp_dir: Path | None = None
        self._owns_temp_dir = False
        self._gcs_port: int | None = None
        self._dashboard_port: int | None = None
        self._nodes: list[NodeProcess] = []
        self._connected = False

    # -- what callers read -------------------------------------------------------------

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:port``) for ``ray.init(address=...)``."""
        if self._gcs_port is None:
            raise NotReadyError("the Ray cluster is not started: call start() first")
        return f"127.0.0.1:{self._gcs_port}"

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's URL, or None when started without one."""
        if self._dashboard_port is None:
            return None
        return f"http://127.0.0.1:{self._dashboard_port}"

    @property
    def token_path(self) -> Path | None:
        """The auth token file in token mode (dashboard: ``Authorization: Bearer <token>``)."""
        return self.workdir / "ray_auth_token" if self.auth_mode == "token" else None

    @property
    def auth_token(self) -> str | None:
        """The auth token in token mode, else None."""
        path = self.token_path
        return path.read_text().strip() if path is not None and path.exists() else None

    @property
    def client_env(self) -> dict[str, str]:
        """Environment variables a Ray client process needs to connect to this cluster."""
        env: dict[str, str] = {"RAY_AUTH_MODE": self.auth_mode}
        if self.token_path is not None:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        return env

    @property
    def temp_dir(self) -> Path | None:
        """Ray's temp dir (sessions, sockets, logs) while the cluster runs."""
        return self._temp_dir

    @property
    def nodes(self) -> tuple[RayNodeInfo, ...]:
        """The nodes this cluster started, head first."""
        return tuple(node.info for node in self._nodes)

    @property
    def running(self) -> bool:
        """Whether every node process this cluster started is alive."""
        return bool(self._nodes) and all(n.process.poll() is None for n in self._nodes)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        """Start the head and the edge worker nodes; return the cluster address.

        A node that exits or does not start within ``start_timeout_s`` is stopped and
        started once more (logged); a head whose GCS came up but not the rest of it is
        tried again with its edge nodes, which joined that GCS.

        Raises:
            ConfigError: ``ray_cli`` is not an executable file.
            NotReadyError: the ray CLI is missing, or a node's last attempt exited.
            OperationTimeoutError: a node's last attempt did not start in time.
        """
        if self._nodes:
            return self.address
        self._ray_cli = self._find_cli()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_temp_dir()
        self._ensure_token()
        self._env = self._process_env()
        head_spec = NodeSpec("head", self.head_labels, self.head_cpus, head=True)
        edge_specs = [
            NodeSpec(f"edge-{index}", labels, self.edge_cpus, head=False)
            for index, labels in enumerate(self.edge_nodes)
        ]
        try:
            # Edge nodes need only the GCS (they retry until the head registers), so they
            # start while the head brings up its raylet and agents: ~3 s sooner.
            head = self._await(self._launch(head_spec), until_gcs=True)
            edges = [self._launch(spec) for spec in edge_specs]
            try:
                self._wait_started(head)
            except (NotReadyError, OperationTimeoutError) as error:
                for edge in edges:  # they joined the GCS of a head that goes now
                    self._discard(edge)
                head = self._await(self._relaunch(head, error, until_gcs=False))
                edges = [self._launch(spec) for spec in edge_specs]
            for edge in edges:
                self._await(edge)
            if self._dashboard_port is not None:
                self._wait_dashboard()
        except BaseException:
            self.stop()
            raise
        return self.address

    def _find_cli(self) -> str:
        if self._ray_cli_arg is None:
            return find_ray_cli()
        if not (os.path.isfile(self._ray_cli_arg) and os.access(self._ray_cli_arg, os.X_OK)):
            raise ConfigError(f"ray_cli {self._ray_cli_arg!r} is not an executable file")
        return self._ray_cli_arg

    def connect(self, namespace: str, **init_kwargs: Any) -> None:
        """Connect this process to the cluster with ``ray.init`` and wait for all nodes.

        Sets ``client_env`` in ``os.environ`` first: ray.init reads the auth mode and
        token from this process's environment.
        """
        import ray  # the cloud extra; imported here so the core stays Ray-free

        os.environ.pop("RAY_AUTH_TOKEN", None)  # would override the token path
        os.environ.update(self.client_env)
        # Ray Data otherwise polls a Prometheus on localhost:9090 from a thread that
        # outlives the driver's logging and prints tracebacks at exit.
        os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
        _reload_ray_auth_config()
        ray.init(address=self.address, namespace=namespace, **init_kwargs)
        self._connected = True
        self.wait_for_nodes()

    def wait_for_nodes(self, timeout_s: float | None = None) -> None:
        """Wait until the GCS reports every node of this cluster alive (needs ``connect``)."""
        import ray

        expected = [node.name for node in self.nodes] or ["head"]
        waited_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + waited_s
        alive: set[str] = set()
        while time.monotonic() < deadline:
            nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
            alive = {str(node.get("NodeName")) for node in nodes if node.get("Alive")}
            if len(alive) >= len(expected):
                return
            time.sleep(0.1)
        missing = [name for name in expected if name not in alive]
        raise OperationTimeoutError(
            f"only {len(alive)} of {len(expected)} Ray nodes alive in the GCS at {self.address} "
            f"after {waited_s:g} s (not alive: {', '.join(missing) or '?'}); their logs: "
            f"{self.workdir}/ray-<node>.log"
        )

    def stop(self) -> None:
        """Stop every process this cluster started (SIGTERM, then SIGKILL after a bound)."""
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
        sessions = [node.process.pid for node in self._nodes]
        for node in self._nodes:
            signal_group(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for node in self._nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Whatever is left of our sessions (the ray start process, raylet children that
        # outlived it) is killed; other sessions are never touched.
        kill_sessions(sessions, timeout_s=self.stop_timeout_s)
        for node in self._nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=self.stop_timeout_s)
        self._nodes = []
        self._gcs_port = None
        self._dashboard_port = None
        self._release_temp_dir()

    def __enter__(self) -> LocalRayCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.address if self._gcs_port is not None else "stopped"
        return f"LocalRayCluster({where}, nodes={[n.name for n in self.nodes]})"

    # -- internals ---------------------------------------------------------------------

    def _prepare_temp_dir(self) -> None:
        if self._temp_dir_arg is not None:
            self._temp_dir_arg.mkdir(parents=True, exist_ok=True)
            self._temp_dir, self._owns_temp_dir = self._temp_dir_arg, False
        else:
            # Under /tmp, not the workdir: pytest's tmp paths are too long for Ray's sockets.
            self._temp_dir = Path(tempfile.mkdtemp(prefix="ctm-ray-", dir="/tmp"))
            self._owns_temp_dir = True
        _check_temp_dir(self._temp_dir)

    def _release_temp_dir(self) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is None or not self._owns_temp_dir:
            return
        # Keep Ray's own logs with ours in the workdir, then drop sockets and spill files.
        logs = temp_dir / "session_latest" / "logs"
        if logs.is_dir():
            target = self.workdir / "ray-logs"
            suffix = 1
            while target.exists():
                suffix += 1
                target = self.workdir / f"ray-logs.{suffix}"
            shutil.move(str(logs.resolve()), target)
        shutil.rmtree(temp_dir, ignore_errors=True)

    def _ensure_token(self) -> None:
        path = self.token_path
        if path is not None and not path.exists():
            # A private token per cluster: ~/.ray/auth_token is neither read nor written.
            atomic_write(path, secrets.token_hex(32), mode=OWNER_ONLY)

    def _process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
        env.update(self.extra_env)
        env.update(self.client_env)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_DATA_USAGE_DISABLED"] = "1"
        # On SIGTERM a node would otherwise wait up to 30 s for Serve-style draining.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # Each tenant's cloud head is a handful of light named actors (no CPU reserved), so
        # a 2-CPU machine starts a dozen workers at once; Ray caps concurrent worker starts
        # at the CPU count and warns at every multiple of it ("N PYTHON worker processes
        # have been started ... maximum expected startup concurrency").
        env.setdefault("RAY_worker_maximum_startup_concurrency", str(_STARTUP_CONCURRENCY))
        return env

    def _node_env(self, name: str) -> dict[str, str]:
        """Return edge node ``name``'s own environment (``edge_env``); the head has none."""
        index = int(name.removeprefix("edge-")) if name.startswith("edge-") else -1
        return self.edge_env[index] if 0 <= index < len(self.edge_env) else {}

    def _launch(self, spec: NodeSpec, *, attempt: int = 1) -> NodeProcess:
        """Start one attempt at ``spec``'s node (``ray start --block`` in its own session)."""
        assert self._temp_dir is not None
        name, labels, num_cpus, head = spec.name, spec.labels, spec.num_cpus, spec.head
        metrics_port = free_port()
        args = ray_start_args(
            spec,
            ray_cli=self._ray_cli,
            temp_dir=self._temp_dir,
            object_store_bytes=self.object_store_bytes,
            metrics_port=metrics_port,
        )
        if head:
            self._gcs_port = free_port()
            dashboard_port = free_port()
            args += [
                "--head",
                f"--port={self._gcs_port}",
                f"--ray-client-server-port={free_port()}",
                f"--include-dashboard={'true' if self.dashboard else 'false'}",
                "--dashboard-host=127.0.0.1",
                # Even without the dashboard Ray runs a head process on this port
                # (default 8265, which a second cluster on the machine would collide on).
                f"--dashboard-port={dashboard_port}",
            ]
            if self.dashboard:
                self._dashboard_port = dashboard_port
        else:
            args.append(f"--address={self.address}")
        log_path = self.workdir / f"ray-{name}.log"
        with log_path.open("ab") as out:
            if attempt > 1:
                out.write(f"--- continuum: attempt {attempt} of {START_ATTEMPTS} ---\n".encode())
                out.flush()
            offset = out.tell()
            process = subprocess.Popen(
                args,
                env=self._env | self._node_env(name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: stop() signals exactly this node's processes.
                start_new_session=True,
            )
        node = NodeProcess(
            spec=spec,
            attempt=attempt,
            log_offset=offset,
            info=RayNodeInfo(
                name=name,
                labels=dict(labels),
                num_cpus=num_cpus,
                metrics_export_port=metrics_port,
                log_path=log_path,
                pid=process.pid,
            ),
            process=process,
        )
        self._nodes.append(node)
        return node

    def _wait_started(self, node: NodeProcess, *, until_gcs: bool = False) -> None:
        """Wait until one attempt is up: its GCS accepts (``until_gcs``) or its log says so.

        Raises:
            NotReadyError: its ``ray start`` exited.
            OperationTimeoutError: ``start_timeout_s`` after its launch it was not up.
        """
        deadline = node.started_at + self.start_timeout_s
        while time.monotonic() < deadline:
            code = node.process.poll()
            if code is not None:
                raise NotReadyError(
                    f"exited with code {code} within "
                    f"{time.monotonic() - node.started_at:.0f} s of its launch"
                )
            if until_gcs:
                assert self._gcs_port is not None
                if port_accepts("127.0.0.1", self._gcs_port):
                    return
            elif _STARTED_MARKER in node.output():
                return
            time.sleep(0.05)
        raise OperationTimeoutError(f"was not up within {self.start_timeout_s:g} s")

    def _await(self, node: NodeProcess, *, until_gcs: bool = False) -> NodeProcess:
        """Wait for ``node`` to start, trying again after a failure; return the attempt that did."""
        while True:
            try:
                self._wait_started(node, until_gcs=until_gcs)
                return node
            except (NotReadyError, OperationTimeoutError) as error:
                node = self._relaunch(node, error, until_gcs=until_gcs)

    def _waited_for(self, spec: NodeSpec, *, until_gcs: bool) -> str:
        """Say what starting ``spec`` waits for, naming the address."""
        if spec.head and until_gcs:
            return f"its GCS to accept connections on {self.address}"
        if spec.head:
            return f"{_STARTED_MARKER!r} in its log, with its GCS on {self.address}"
        return f"{_STARTED_MARKER!r} in its log, joining the head's GCS at {self.address}"

    def _relaunch(
        self,
        node: NodeProcess,
        error: NotReadyError | OperationTimeoutError,
        *,
        until_gcs: bool,
    ) -> NodeProcess:
        """Stop a failed attempt with all it started, then launch the next one.

        Raises:
            NotReadyError, OperationTimeoutError: that was the last attempt (as ``error``);
                the message names the node, what it waited for, for how long, and its log.
        """
        name = node.info.name
        what = self._waited_for(node.spec, until_gcs=until_gcs)
        output = node.output()
        self._discard(node)
        if node.attempt >= START_ATTEMPTS:
            raise type(error)(
                f"Ray node {name!r} did not start in {node.attempt} attempts of up to "
                f"{self.start_timeout_s:g} s each: the last {error} while waiting for {what}; "
                f"log {node.info.log_path}:\n{tail_lines(output)}\n"
                "The machine may be short of CPU or memory, or another Ray cluster still "
                "stopping: start again, or give start_timeout_s more time"
            ) from error
        last = tail_lines(output, 1) or "(no output)"
        log.warning(
            "Ray node %r did not start (attempt %d of %d): it %s while waiting for %s; its "
            "processes are stopped and it starts again. Its last log line: %s",
            name,
            node.attempt,
            START_ATTEMPTS,
            error,
            what,
            last,
        )
        return self._launch(node.spec, attempt=node.attempt + 1)

    def _discard(self, node: NodeProcess) -> None:
        """Stop one attempt: every process of its session, then forget it."""
        signal_group(node.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=min(self.stop_timeout_s, 5.0))
        kill_sessions([node.process.pid], timeout_s=self.stop_timeout_s)
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=self.stop_timeout_s)
        self._nodes.remove(node)

    def _wait_dashboard(self) -> None:
        assert self._dashboard_port is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if port_accepts("127.0.0.1", self._dashboard_port):
                return
            time.sleep(0.1)
        raise OperationTimeoutError(
            f"the Ray dashboard did not accept on port {self._dashboard_port} within "
            f"{self.start_timeout_s:g} s; logs under {self._temp_dir}"
        )


def _reload_ray_auth_config() -> None:
    """Make an already imported Ray see the auth settings just put in ``os.environ``.

    Ray reads ``RAY_AUTH_MODE`` into its C++ config when it is first imported; a
    process that imported ray earlier would otherwise connect without the token and
    fail after ~20 s with InvalidAuthToken.  Ray's own ``_enable_token_auth`` does
    the same reload.
    """
    # Private Cython names the ray stubs do not declare; looked up at run time.
    raylet: Any = importlib.import_module("ray._raylet")
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def _check_temp_dir(path: Path) -> None:
    if len(str(path)) > MAX_TEMP_DIR_CHARS:
        raise ConfigError(
            f"Ray temp dir {str(path)!r} is {len(str(path))} characters; Ray's unix sockets need "
            f"it to be at most {MAX_TEMP_DIR_CHARS} (fix: pass a short one such as /tmp/ctm-ray)"
        )
