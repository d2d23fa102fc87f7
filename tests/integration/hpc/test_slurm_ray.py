"""``continuum hpc`` on a real local Slurm: Ray nodes labelled tier=hpc inside an allocation.

The local Slurm has two nodes of 2 CPUs on this one machine; each allocation takes one CPU per
node and gives Ray one CPU per node. The allocation's own Ray cluster is asked from a child
process (``_ray_probe.py``): this process may be a driver of the session's other Ray cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_head._training_pool import ENDS_AT_LABEL
from cloud_head.cli.hpc import SLURM_JOB_LABEL
from continuum.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, main
from continuum.embedded import LocalRayCluster
from continuum.embedded._process import port_accepts
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.integration

_PROBE = Path(__file__).with_name("_ray_probe.py")
_LABELS = {
    "continuum.io/tier": "hpc",
    "continuum.io/site": "lux-hpc",
    "continuum.io/country": "LU",
    "continuum.io/jurisdiction": "LU",
    "continuum.io/accelerator": "h100",
}
_UP = [
    "hpc", "up", "--nodes", "1", "--time", "00:10:00", "--cpus-per-node", "1",
    "--site", "lux-hpc", "--country", "LU", "--jurisdiction", "LU", "--accelerator", "h100",
    "--timeout-s", "90",
]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _up(capsys: pytest.CaptureFixture[str], state_dir: Path, *extra: str) -> str:
    status, out, err = _run(capsys, *_UP, "--state-dir", str(state_dir), *extra)
    assert status == EXIT_OK, err
    return out.splitlines()[0]


def _temp_dirs(state_dir: Path, job_id: str) -> list[str]:
    """Return the Ray temp dirs of the allocation's running nodes, from their ready files."""
    ready = (state_dir / f"ray-{job_id}").glob("*.ready")
    lines = [line for path in ready for line in path.read_text().splitlines()]
    return [line.removeprefix("temp_dir=") for line in lines if line.startswith("temp_dir=")]


def _processes_in(temp_dirs: list[str]) -> list[str]:
    """Return the command lines of processes that run in any of these Ray temp dirs."""
    assert temp_dirs, "no Ray temp dir to look for"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # it ended meanwhile
                continue
            if any(f"{temp}/" in cmdline or f"={temp} " in cmdline for temp in temp_dirs):
                found.append(cmdline)
    return found


def _without_end(labels: dict[str, str]) -> dict[str, str]:
    """Return ``labels`` less ``ENDS_AT_LABEL``, once it says Ray stops within the 10 min limit
    less the script's 30 s signal lead."""
    ends_at = int(labels[ENDS_AT_LABEL])
    assert time.time() < ends_at <= time.time() + 600 - 30 + 1
    return {k: v for k, v in labels.items() if k != ENDS_AT_LABEL}


def _probe(info: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE=info["auth_mode"], RAY_AUTH_TOKEN_PATH=info["auth_token_path"])
    done = subprocess.run(
        [sys.executable, str(_PROBE), info["address"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def own_allocation(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Bring up an allocation with a Ray cluster of its own; yield its job id and head file."""
    state_dir = tmp_path_factory.mktemp("hpc-own")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(slurm_cluster.env)
    up = subprocess.run(
        [sys.executable, "-m", "continuum.cli", *_UP, "--state-dir", str(state_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    job_id = up.stdout.splitlines()[0]
    try:
        yield job_id, json.loads((state_dir / f"ray-{job_id}.json").read_text())
    finally:
        slurm_cluster.run("scancel", job_id)


class TestOwnClusterInsideTheAllocation:
    def test_the_ray_node_carries_the_labels_given(
        self, own_allocation: tuple[str, dict[str, Any]], slurm_cluster: SlurmCluster
    ) -> None:
        job_id, info = own_allocation
        assert info["layout"] == "own"
        nodes = _probe(info)["nodes"]
        assert len(nodes) == 1
        assert nodes[0]["alive"]
        assert nodes[0]["name"] in {f"slurm-{job_id}-{node}" for node in slurm_cluster.nodes}
        labels = {k: v for k, v in nodes[0]["labels"].items() if not k.startswith("ray.io/")}
        assert _without_end(labels) == {**_LABELS, SLURM_JOB_LABEL: job_id}

    def test_a_task_selecting_tier_hpc_runs_on_it(
        self, own_allocation: tuple[str, dict[str, Any]]
    ) -> None:
        job_id, info = own_allocation
        ran_on = _probe(info)["task_node"]
        assert ran_on["labels"][SLURM_JOB_LABEL] == job_id
        assert ran_on["labels"]["continuum.io/tier"] == "hpc"

    def test_status_lists_the_allocation_and_its_labelled_node(
        self,
        own_allocation: tuple[str, dict[str, Any]],
        slurm_env: SlurmCluster,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        job_id, info = own_allocation
        state_dir = Path(info["auth_token_path"]).parent
        status, out, err = _run(capsys, "hpc", "status", "--state-dir", str(state_dir), "--json")
        assert status == EXIT_OK, err
        (mine,) = [a for a in json.loads(out)["allocations"] if a["job_id"] == job_id]
        assert mine["state"] == "RUNNING"
        assert mine["address"] == info["address"]
        assert len(mine["ready_hosts"]) == 1
        assert [_without_end(n["labels"]) for n in mine["ray_nodes"]] == [
            {**_LABELS, SLURM_JOB_LABEL: job_id}
        ]
        status, out, err = _run(capsys, "hpc", "status", "--state-dir", str(state_dir))
        assert status == EXIT_OK, err
        assert re.search(r"Ray stops at \S+ \S+ \(in \d+ min, ahead of the time limit\)", out)


class TestTwoNodesThenDown:
    def test_both_nodes_join_the_head_and_down_ends_every_ray_process(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        job_id = _up(capsys, tmp_path, "--nodes", "2")
        info = json.loads((tmp_path / f"ray-{job_id}.json").read_text())
        host, _, port = info["address"].rpartition(":")
        nodes = _probe(info)["nodes"]
        assert sorted(n["name"] for n in nodes) == [f"slurm-{job_id}-{n}" for n in slurm_env.nodes]
        assert all(n["alive"] and n["labels"][SLURM_JOB_LABEL] == job_id for n in nodes)
        temp_dirs = _temp_dirs(tmp_path, job_id)
        assert len(temp_dirs) == 2
        assert _processes_in(temp_dirs), "the allocation runs no Ray process to stop"

        status, out, err = _run(capsys, "hpc", "down", job_id, "--state-dir", str(tmp_path))

        assert status == EXIT_OK, err
        assert "its Ray nodes stopped" in out
        assert job_id not in slurm_env.run("squeue", "--noheader", "-o%i").split()
        assert _processes_in(temp_dirs) == []
        assert not port_accepts(host, int(port))
        assert not (tmp_path / f"ray-{job_id}.json").exists()
        assert not (tmp_path / f"ray-{job_id}.token").exists()
        assert not any(Path(temp).exists() for temp in temp_dirs)


class TestTimeLimit:
    @pytest.mark.slow
    @pytest.mark.timeout(300)
    def test_ray_stops_and_cleans_up_ahead_of_the_time_limit(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Two minutes: Slurm may send --signal's SIGTERM up to a minute early, so a one-minute
        # allocation would stop its Ray before it had run.
        argv = [*_UP, "--state-dir", str(tmp_path), "--time", "00:02:00"]
        status, out, err = _run(capsys, *argv)
        assert status == EXIT_OK, err
        job_id = out.splitlines()[0]
        temp_dirs = _temp_dirs(tmp_path, job_id)
        assert _processes_in(temp_dirs)
        deadline = time.monotonic() + 200  # slurmctld checks time limits every 30 s or so
        while job_id in _jobs(slurm_env) and time.monotonic() < deadline:
            time.sleep(1)
        assert job_id not in _jobs(slurm_env)
        # The script's --signal=TERM@30 stops its Ray nodes before the limit's SIGTERM and
        # KillWait's SIGKILL can cut their clean-up short: processes, temp dirs, head file.
        output = (tmp_path / f"ray-{job_id}.out").read_text()
        assert "DUE TO TIME LIMIT" not in output, output
        deadline = time.monotonic() + 60
        while _processes_in(temp_dirs) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_in(temp_dirs) == []
        assert not any(Path(temp).exists() for temp in temp_dirs)
        assert not (tmp_path / f"ray-{job_id}.json").exists()


def _jobs(slurm: SlurmCluster) -> list[str]:
    return slurm.run("squeue", "--noheader", "-o%i").split()


class TestDownRefuses:
    def test_a_job_that_is_not_an_allocation_of_ours(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        other = slurm_env.run(
            "sbatch", "--parsable", "--job-name=someone-else", "--wrap=sleep 60"
        ).strip()
        try:
            status, _, err = _run(capsys, "hpc", "down", other, "--state-dir", str(tmp_path))
            assert status == EXIT_INVALID
            assert "not a continuum-ray allocation" in err and "scancel" in err
            assert other in slurm_env.run("squeue", "--noheader", "-o%i").split()
        finally:
            slurm_env.run("scancel", other)


class TestRefusals:
    @pytest.mark.parametrize(
        ("change", "says"),
        [
            (("--time", "2h"), "write HH:MM:SS or D-HH:MM:SS"),
            (("--time", "01:75:00"), "write HH:MM:SS or D-HH:MM:SS"),
            (("--nodes", "0"), "give a whole number 1-4096"),
            (("--country", "Luxembourg"), "ISO 3166 two-letter code"),
            (("--site", "lux hpc"), "use 1-63 letters, digits"),
            (("--join", "head-node"), "write the head's GCS as HOST:PORT"),
            (("--sbatch-arg", "--job-name=mine"), "sets what `continuum hpc up` sets itself"),
            (("--sbatch-arg", "gpu:4"), "is not an sbatch option"),
            (("--interface", "ib0; rm"), "is not a network interface name"),
        ],
    )
    def test_a_wrong_argument_is_refused_with_the_fix(
        self,
        change: tuple[str, str],
        says: str,
        slurm_env: SlurmCluster,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        option, value = change
        argv = [*_UP, "--state-dir", str(tmp_path)]
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:  # one word: argparse takes a value that starts with '-' for an option
            argv.append(f"{option}={value}")
        before = _our_jobs(slurm_env)
        status, _, err = _run(capsys, *argv)
        assert status == EXIT_INVALID
        assert says in err
        assert _our_jobs(slurm_env) == before  # nothing was submitted


def _our_jobs(slurm: SlurmCluster) -> set[str]:
    return set(slurm.run("squeue", "--noheader", "--name=continuum-ray", "-o%i").split())


class TestJoinRefusals:
    def test_join_without_the_clusters_auth_mode_is_refused(
        self,
        slurm_env: SlurmCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        before = _our_jobs(slurm_env)
        argv = [*_UP, "--state-dir", str(tmp_path), "--join", "127.0.0.1:6379"]
        status, _, err = _run(capsys, *argv)
        assert status == EXIT_INVALID
        assert "export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH" in err
        assert _our_jobs(slurm_env) == before

    def test_join_in_token_mode_without_a_token_file_is_refused(
        self,
        slurm_env: SlurmCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing-token"))
        argv = [*_UP, "--state-dir", str(tmp_path), "--join", "127.0.0.1:6379"]
        status, _, err = _run(capsys, *argv)
        assert status == EXIT_INVALID
        assert "needs RAY_AUTH_TOKEN_PATH naming the cluster's token file" in err


class TestSlurmRefusals:
    def test_sbatch_refusing_the_job_is_reported_with_its_reason(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = [*_UP, "--state-dir", str(tmp_path), "--partition", "no-such-partition"]
        status, out, err = _run(capsys, *argv)
        assert status == EXIT_FAILED
        assert "sbatch failed" in err and "invalid partition" in err.lower()
        assert out == ""

    def test_an_allocation_that_ends_before_ray_runs_is_reported_with_its_output(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        script = tmp_path / "broken.sbatch"
        script.write_text("#!/bin/bash\necho 'no ray here' >&2\nexit 3\n")
        argv = [*_UP, "--state-dir", str(tmp_path), "--script", str(script)]
        status, out, err = _run(capsys, *argv)
        assert status == EXIT_FAILED
        job_id = out.splitlines()[0]
        assert f"Slurm job {job_id} ended" in err and "before its Ray nodes ran" in err
        assert "no ray here" in err

    def test_a_ray_cli_the_nodes_lack_stops_the_allocation_with_the_fix(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = [*_UP, "--state-dir", str(tmp_path), "--ray-cli", str(tmp_path / "no-ray")]
        status, out, err = _run(capsys, *argv)
        assert status == EXIT_FAILED
        assert f"Slurm job {out.splitlines()[0]} ended" in err
        assert f"no ray executable at '{tmp_path / 'no-ray'}'" in err
        assert "--ray-cli PATH" in err

    def test_a_node_without_the_interface_named_stops_the_allocation_with_the_reason(
        self, slurm_env: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = [*_UP, "--state-dir", str(tmp_path), "--interface", "nosuch0"]
        temp_dirs_before = set(Path("/tmp").glob("ctm-hpc-*"))
        status, out, err = _run(capsys, *argv)
        assert status == EXIT_FAILED
        job_id = out.splitlines()[0]
        assert f"Slurm job {job_id} ended" in err
        assert "has no IPv4 address on interface 'nosuch0'" in err
        assert set(Path("/tmp").glob("ctm-hpc-*")) <= temp_dirs_before


class TestJoinLayout:
    def test_the_allocation_joins_an_existing_cluster_and_takes_hpc_tasks(
        self,
        ray_cluster: LocalRayCluster,
        slurm_env: SlurmCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        import ray

        for name, value in ray_cluster.client_env.items():
            monkeypatch.setenv(name, value)
        job_id = _up(capsys, tmp_path, "--join", ray_cluster.address)
        temp_dirs = _temp_dirs(tmp_path, job_id)
        try:
            mine = _alive_nodes_of(job_id)
            assert len(mine) == 1
            labels = {k: v for k, v in mine[0]["Labels"].items() if not k.startswith("ray.io/")}
            assert _without_end(labels) == {**_LABELS, SLURM_JOB_LABEL: job_id}

            @ray.remote(num_cpus=1)
            def where() -> str:
                return ray.get_runtime_context().get_node_id()

            selector = {"continuum.io/tier": "hpc", SLURM_JOB_LABEL: job_id}
            ran_on = ray.get(where.options(label_selector=selector).remote(), timeout=60)
            assert ran_on == mine[0]["NodeID"]
        finally:
            status, _, err = _run(capsys, "hpc", "down", job_id, "--state-dir", str(tmp_path))
        assert status == EXIT_OK, err
        deadline = time.monotonic() + 30
        while _alive_nodes_of(job_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive_nodes_of(job_id) == []
        assert _processes_in(temp_dirs) == []
        assert list(tmp_path.glob(f"ray-{job_id}*.json")) == []


def _alive_nodes_of(job_id: str) -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n["Alive"] and n.get("Labels", {}).get(SLURM_JOB_LABEL) == job_id]
