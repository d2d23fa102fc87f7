"""Fixtures of the HPC path's integration tests: a real single-node Slurm on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slurm_cluster import SlurmCluster, slurm_missing


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Yield a local Slurm (munged, slurmctld, two slurmd: two nodes of 2 CPUs) for the session.

    Skips, saying how to install it, where Slurm's binaries are missing.
    """
    reason = slurm_missing()
    if reason is not None:
        pytest.skip(reason)
    with SlurmCluster(nodes=2, cpus=2) as cluster:
        yield cluster


@pytest.fixture
def slurm_env(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """Point this test's Slurm clients (``continuum hpc``, sbatch) at the local Slurm."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    return slurm_cluster
