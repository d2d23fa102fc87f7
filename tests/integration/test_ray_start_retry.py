"""A Ray node whose start fails or hangs is stopped and started once more; twice is an error.

The cluster runs the real ``ray`` through a small wrapper put in its place (``ray_cli``):
the first ``ray start`` of a node (or every one) fails as Ray's own start-up timeout does, or
hangs, before the wrapper hands over to the real CLI. Nothing of Ray is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from continuum.embedded import LocalRayCluster
from continuum.embedded.ray_cluster import START_ATTEMPTS, find_ray_cli
from continuum.errors import NotReadyError
from pipelines.demo._tenants import CLOUD_LABELS, EDGE_NODE_LABELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: What ``ray start`` prints when its raylet does not register within Ray's fixed 30 s.
RAY_TIMEOUT = (
    "Exception: The current node timed out during startup. This could happen because some "
    "of the raylet failed to startup or the GCS has become overloaded."
)


class FlakyRay:
    """A ``ray`` CLI that fails the first ``fail[role]`` node starts of a role, then is Ray.

    ``mode`` "exit": the attempt prints Ray's start-up timeout and exits 1 after a second;
    "hang": it never starts (and writes its pid, so the test can see it stopped).
    """

    def __init__(self, root: Path, *, fail: dict[str, int], mode: str = "exit") -> None:
        self.state = root / "flaky-ray"
        self.state.mkdir(parents=True)
        self.path = self.state / "ray"
        failure = (
            f'echo "{RAY_TIMEOUT}"; sleep 1; exit 1'
            if mode == "exit"
            else 'echo $$ > "$STATE/$role.$n.pid"; exec sleep 600'
        )
        self.path.write_text(
            textwrap.dedent(
                f"""\
                #!/bin/sh
                STATE={self.state}
                case " $* " in *" --head "*) role=head; fail={fail.get("head", 0)} ;;
                  *) role=edge; fail={fail.get("edge", 0)} ;; esac
                n=$(( $(cat "$STATE/$role.calls" 2>/dev/null || echo 0) + 1 ))
                echo $n > "$STATE/$role.calls"
                if [ "$n" -le "$fail" ]; then {failure}; fi
                exec {find_ray_cli()} "$@"
                """
            )
        )
        self.path.chmod(0o755)

    def calls(self, role: str) -> int:
        path = self.state / f"{role}.calls"
        return int(path.read_text()) if path.exists() else 0

    def hung_pid(self, role: str, attempt: int) -> int:
        return int((self.state / f"{role}.{attempt}.pid").read_text())


def alive_nodes(cluster: LocalRayCluster) -> dict[str, dict[str, str]]:
    """Ask the cluster's GCS, from a client process of its own, which nodes are alive."""
    script = (
        "import json, ray\n"
        f"ray.init(address={cluster.address!r}, log_to_driver=False)\n"
        "print(json.dumps({n['NodeName']: n['Labels'] for n in ray.nodes() if n['Alive']}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env | cluster.client_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    nodes: dict[str, dict[str, str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        name: {k: v for k, v in labels.items() if not k.startswith("ray.io/")}
        for name, labels in nodes.items()
    }


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "continuum.embedded.ray_cluster" and r.levelno == logging.WARNING
    ]


def session_alive(pid: int) -> bool:
    """Whether any live process is left in the session ``pid`` led (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == pid:
            return True
    return False


class TestNodeStartRetry:
    def test_the_demos_cluster_starts_when_each_nodes_first_start_times_out(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        ray = FlakyRay(tmp_path, fail={"head": 1, "edge": 1})
        cluster = LocalRayCluster(  # the demo's cluster (pipelines/demo/demo.py)
            tmp_path / "ray",
            head_labels=CLOUD_LABELS,
            edge_nodes=[EDGE_NODE_LABELS],
            dashboard=True,
            head_cpus=3,
            edge_cpus=1,
            ray_cli=ray.path,
        )
        try:
            with caplog.at_level(logging.WARNING, logger="continuum.embedded.ray_cluster"):
                cluster.start()

            assert (ray.calls("head"), ray.calls("edge")) == (2, 2)
            head_retry, edge_retry = retries(caplog)
            assert head_retry.startswith(
                "Ray node 'head' did not start (attempt 1 of 2): it exited with code 1 within"
            )
            assert "while waiting for its GCS to accept connections on 127.0.0.1:" in head_retry
            assert edge_retry.startswith("Ray node 'edge-0' did not start (attempt 1 of 2)")
            assert f"joining the head's GCS at {cluster.address}" in edge_retry
            assert edge_retry.endswith(f"Its last log line: {RAY_TIMEOUT}")
            assert (
                "--- continuum: attempt 2 of 2 ---"
                in (tmp_path / "ray" / "ray-edge-0.log").read_text()
            )
            assert cluster.running
            assert alive_nodes(cluster) == {"head": CLOUD_LABELS, "edge-0": EDGE_NODE_LABELS}
        finally:
            cluster.stop()

    def test_a_node_start_that_hangs_is_stopped_and_started_again(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        ray = FlakyRay(tmp_path, fail={"edge": 1}, mode="hang")
        cluster = LocalRayCluster(
            tmp_path / "ray", head_cpus=1, start_timeout_s=20, ray_cli=ray.path
        )
        try:
            with caplog.at_level(logging.WARNING, logger="continuum.embedded.ray_cluster"):
                cluster.start()

            hung = ray.hung_pid("edge", 1)
            assert not session_alive(hung)  # the hung attempt was stopped, not left behind
            (retry,) = retries(caplog)
            assert retry.startswith(
                "Ray node 'edge-0' did not start (attempt 1 of 2): it was not up within 20 s"
            )
            assert ray.calls("edge") == 2 and cluster.running
            assert set(alive_nodes(cluster)) == {"head", "edge-0"}
        finally:
            cluster.stop()

    def test_a_node_that_fails_twice_is_an_error_naming_what_it_waited_for(
        self, tmp_path: Path
    ) -> None:
        ray = FlakyRay(tmp_path, fail={"edge": START_ATTEMPTS})
        cluster = LocalRayCluster(tmp_path / "ray", head_cpus=1, ray_cli=ray.path)

        with pytest.raises(NotReadyError) as raised:
            cluster.start()

        message = str(raised.value)
        assert message.startswith(
            "Ray node 'edge-0' did not start in 2 attempts of up to 60 s each: the last exited "
            "with code 1 within "
        )
        assert "joining the head's GCS at 127.0.0.1:" in message
        assert f"log {tmp_path / 'ray' / 'ray-edge-0.log'}:\n{RAY_TIMEOUT}\n" in message
        assert "give start_timeout_s more time" in message
        assert ray.calls("edge") == 2
        assert cluster.nodes == () and not cluster.running  # the head was stopped too
