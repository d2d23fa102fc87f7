"""One node of the local Ray cluster: what it starts as, one attempt at it, its command line.

``LocalRayCluster`` launches, waits for and retries nodes; this module holds the records it
keeps of them, the ``ray start`` arguments every node shares and the check that its labels
are ones Ray accepts.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from continuum.embedded._process import free_port
from continuum.errors import ConfigError

_LABEL_PART = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_LABEL_VALUE = re.compile(rf"^{_LABEL_PART}$")
_LABEL_PREFIX = re.compile(rf"^{_LABEL_PART}(\.{_LABEL_PART})*$")


@dataclass(frozen=True)
class RayNodeInfo:
    """One node this cluster started: its name, labels, CPUs, ports and log."""

    name: str
    labels: Mapping[str, str]
    num_cpus: int
    metrics_export_port: int
    log_path: Path
    pid: int


@dataclass(frozen=True)
class NodeSpec:
    """What one node is started as; each attempt at it is launched from this."""

    name: str
    labels: Mapping[str, str]
    num_cpus: int
    head: bool


@dataclass
class NodeProcess:
    """One attempt at starting a node: its ``ray start`` process and where its log begins."""

    spec: NodeSpec
    info: RayNodeInfo
    process: subprocess.Popen[bytes]
    attempt: int
    #: Where this attempt's output begins in the node's log (an earlier attempt wrote before).
    log_offset: int
    started_at: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        """Return what this attempt has written to the node's log so far."""
        with contextlib.suppress(FileNotFoundError), self.info.log_path.open("rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode(errors="replace")
        return ""


def check_labels(labels: Mapping[str, str], where: str) -> dict[str, str]:
    """Return ``labels`` as a dict if every key and value is a valid Ray node label.

    Raises:
        ConfigError: a key or value breaks Ray's (Kubernetes-style) label syntax.
    """
    checked: dict[str, str] = {}
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))) or not (
            len(name) <= 63 and _LABEL_VALUE.match(name)
        ):
            raise ConfigError(
                f"{where}: invalid label key {key!r}: use an optional DNS prefix and '/', then "
                "1-63 letters, digits, '-', '_' or '.', e.g. 'continuum.io/tier'"
            )
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ConfigError(
                f"{where}: invalid value {value!r} for label {key!r}: use 1-63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit"
            )
        checked[key] = value
    return checked


def ray_start_args(
    spec: NodeSpec,
    *,
    ray_cli: str,
    temp_dir: Path,
    object_store_bytes: int,
    metrics_port: int,
) -> list[str]:
    """Return the ``ray start --block`` arguments of ``spec``'s node that a head and a worker share.

    The caller adds the head's ``--head`` and GCS port, or a worker's ``--address``.  Every
    agent port is a free one, so clusters on one machine never collide.
    """
    args = [
        ray_cli,
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--node-name={spec.name}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={spec.num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_bytes}",
        # 0/0: workers bind random ports instead of a range other clusters share.
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={metrics_port}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    if spec.labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()))
    return args
