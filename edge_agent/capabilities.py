"""What this box can run: inference backends, GPU and TensorRT version, agent version.

Probed once at start; the result goes into the retained node status so the cloud can place
work and build engines for what each node has.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass

from continuum.backends import available_backends, nvidia_gpu_present, tensorrt_version

__all__ = ["Capabilities", "agent_version", "probe"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The inference capabilities of this node."""

    backends: tuple[str, ...]
    gpu: str | None
    tensorrt_version: str | None


def agent_version() -> str:
    """Return the installed continuum version (the agent ships with it)."""
    try:
        return importlib.metadata.version("continuum")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def probe(timeout_s: float = 5.0) -> Capabilities:
    """Probe backends, the GPU model name and the TensorRT version (bounded by ``timeout_s``)."""
    return Capabilities(
        backends=tuple(available_backends()),
        gpu=_gpu_name(timeout_s),
        tensorrt_version=tensorrt_version(),
    )


def _gpu_name(timeout_s: float) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0][:128]
    # Jetson boards have no nvidia-smi but do have the device nodes.
    return "nvidia" if nvidia_gpu_present(timeout_s=timeout_s) else None
