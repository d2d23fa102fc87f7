"""A real single-node Slurm on this machine, for the tests of the HPC path (``continuum hpc``).

Like the tests' mosquitto and PostgreSQL, it is the real thing run privately: Debian's
``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``), each daemon in the
foreground in a session of its own, with every file (munge key and socket, ``slurm.conf``,
state, spool, logs) in one temporary folder and Slurm's two ports free ones. Clients find it
through ``SLURM_CONF`` (``env``), and munge through the socket that ``slurm.conf`` names, so
a system Slurm or munge on the machine is neither used nor disturbed.

Slurm 22.05 runs as root without systemd with process tracking by parent pid
(``proctrack/linuxproc``), no task binding and no accounting (DESIGN.md §10).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from continuum.embedded._process import free_port, kill_sessions, log_tail
from continuum.errors import NotReadyError, OperationTimeoutError

#: The binaries the cluster needs, all from Debian's slurm-wlm and munge packages.
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
#: The partition every job lands in.
PARTITION = "debug"


def slurm_missing() -> str | None:
    """Return why a local Slurm cannot run here (a binary missing, not root), or None."""
    missing = [name for name in BINARIES if _which(name) is None]
    if missing:
        return (
            f"needs Slurm and munge ({', '.join(missing)} not found): apt-get install slurm-wlm "
            "munge (scripts/bootstrap.sh test does it)"
        )
    if os.geteuid() != 0:
        return "the local Slurm runs its daemons as root (SlurmUser=root); run the tests as root"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class SlurmCluster:
    """Start and stop munged, slurmctld and one slurmd per node, all on this host.

    ``nodes`` Slurm nodes of ``cpus`` CPUs each: the first is named after this host, the
    others ``<host>-2``... (Slurm runs several slurmd on one host, each on its own port), so
    a multi-node allocation runs here. ``env`` is what a client process (sbatch,
    ``continuum hpc``) adds to its environment.
    """

    def __init__(self, *, nodes: int = 1, cpus: int = 2, timeout_s: float = 30.0) -> None:
        self.cpus = cpus
        self.timeout_s = timeout_s
        host = socket.gethostname().split(".")[0]
        self.host = host
        self.nodes = [host, *(f"{host}-{index}" for index in range(2, nodes + 1))]
        # Under /tmp, short: munge's socket path must fit a unix socket address.
        self.workdir = Path(tempfile.mkdtemp(prefix="ctm-slurm-", dir="/tmp"))
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def conf_path(self) -> Path:
        return self.workdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The variables a Slurm client needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def start(self) -> None:
        """Write the configuration, start the three daemons and wait until the node is idle.

        Raises:
            NotReadyError: a daemon exited (its log is in the message).
            OperationTimeoutError: the node was not idle within ``timeout_s``.
        """
        try:
            self._write_config()
            self._spawn("munged", [_need("munged"), "--foreground", "--force", *self._munge_args()])
            self._wait_for(lambda: (self.workdir / "munge.socket").exists(), "munged's socket")
            self._spawn("slurmctld", [_need("slurmctld"), "-D", "-i"])
            for node in self.nodes:
                self._spawn(f"slurmd-{node}", [_need("slurmd"), "-D", "-N", node])
            self._wait_for(self._nodes_idle, f"nodes {', '.join(self.nodes)} idle in sinfo")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every job, stop the daemons and delete the folder."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run("scancel", "--full", f"--partition={PARTITION}")
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline and self.run("squeue", "--noheader").strip():
                    time.sleep(0.2)
        sessions = [process.pid for process in self._daemons.values()]
        for name in reversed(self._daemons):  # the reverse of their start
            process = self._daemons[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=self.timeout_s)
        kill_sessions(sessions, timeout_s=self.timeout_s)
        self._daemons.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, tool: str, *args: str) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        done = subprocess.run(
            [_need(tool), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            check=True,
        )
        return done.stdout

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _munge_args(self) -> list[str]:
        w = self.workdir
        return [
            f"--socket={w / 'munge.socket'}",
            f"--key-file={w / 'munge.key'}",
            f"--pid-file={w / 'munged.pid'}",
            f"--seed-file={w / 'munged.seed'}",
            f"--log-file={w / 'munged.log'}",
        ]

    def _write_config(self) -> None:
        w = self.workdir
        (w / "state").mkdir()
        for node in self.nodes:  # each slurmd's own spool, where its socket goes
            (w / "spool" / node).mkdir(parents=True)
        key = w / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        ports: set[int] = set()
        while len(ports) < 1 + len(self.nodes):
            ports.add(free_port())
        controller_port, *node_ports = sorted(ports)
        node_lines = [
            f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={self.cpus} State=UNKNOWN"
            for node, port in zip(self.nodes, node_ports, strict=True)
        ]
        self.conf_path.write_text(
            "\n".join(
                [
                    "ClusterName=continuum-test",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={controller_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={w / 'munge.socket'}",
                    f"StateSaveLocation={w / 'state'}",
                    f"SlurmdSpoolDir={w / 'spool'}/%n",
                    f"SlurmctldPidFile={w / 'slurmctld.pid'}",
                    f"SlurmdPidFile={w / 'slurmd-%n.pid'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    # How long a cancelled job's processes have between SIGTERM and SIGKILL.
                    "KillWait=10",
                    *node_lines,
                    f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # 22.05 has no CgroupPlugin=disabled; without systemd, autodetect + IgnoreSystemd.
        (w / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    def _spawn(self, name: str, args: list[str]) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            self._daemons[name] = subprocess.Popen(
                args,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _nodes_idle(self) -> bool:
        try:
            states = self.run("sinfo", "--noheader", "--Node", "-o%t")
        except subprocess.CalledProcessError:
            return False  # slurmctld not listening yet
        return states.split() == ["idle"] * len(self.nodes)

    def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for name, process in self._daemons.items():
                if process.poll() is not None:
                    raise NotReadyError(
                        f"{name} exited with code {process.returncode}; its log:\n"
                        f"{log_tail(self.workdir / f'{name}.log')}"
                    )
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(
            f"{name}: {log_tail(self.workdir / f'{name}.log')}" for name in self._daemons
        )
        raise OperationTimeoutError(f"no {what} after {self.timeout_s:g} s; logs:\n{logs}")


def _need(name: str) -> str:
    found = _which(name)
    if found is None:
        raise NotReadyError(f"{name} not found: apt-get install slurm-wlm munge")
    return found
