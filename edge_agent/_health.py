"""Device health for the agent's ``/metrics``: host load, memory, temperatures, GPU, build.

Read when Prometheus scrapes (a custom collector, no thread of its own), so the numbers are
as fresh as the scrape and an idle agent costs nothing. Every source is optional: a box
without ``/proc/meminfo``, thermal zones, NVML or a Jetson GPU load file exports the
family's HELP and TYPE lines and no sample, never an error, so one dashboard and one set of
alerts serve a laptop, an x86 box with a discrete GPU and a Jetson alike. Process CPU,
memory, fds and start time come from prometheus_client's ``ProcessCollector`` (``process_*``),
registered beside this collector in ``edge_agent.metrics``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HealthCollector", "build_versions"]

_log = logging.getLogger(__name__)

_NS = "continuum_edge"
_PROC_MEMINFO = Path("/proc/meminfo")
_THERMAL = Path("/sys/class/thermal")
#: Jetson's integrated GPU load, in per mille (0..1000): Xavier/Orin, then older kernels.
_JETSON_GPU_LOAD = (
    Path("/sys/devices/platform/gpu.0/load"),
    Path("/sys/devices/gpu.0/load"),
    Path("/sys/devices/platform/17000000.ga10b/load"),
    Path("/sys/devices/platform/17000000.gv11b/load"),
)
#: Distributions named in the build-info metric, by label; "none" where not installed.
_PACKAGES = {"version": "continuum", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


@lru_cache(maxsize=1)
def build_versions() -> dict[str, str]:
    """Return the labels of ``continuum_edge_build_info``: what this box runs, for the fleet.

    Read once per process (installed versions do not change under a running agent); the
    caller must not modify the dict.

    TensorRT on Jetson comes from JetPack's system packages, which may lack pip metadata; its
    module's ``__version__`` is asked then, without importing it where it is absent.
    """
    versions = {"python": platform.python_version()}
    for label, distribution in _PACKAGES.items():
        try:
            versions[label] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[label] = "none"
    if versions["tensorrt"] == "none" and importlib.util.find_spec("tensorrt") is not None:
        try:
            versions["tensorrt"] = str(importlib.import_module("tensorrt").__version__)
        except Exception:  # a broken install must not break the scrape
            _log.debug("tensorrt is present but its version cannot be read", exc_info=True)
    return versions


class HealthCollector(Collector):
    """Yield the host, GPU and build-info families at every scrape.

    Args:
        thermal_root: the sysfs thermal class folder (a test points it at a fixture tree).
        meminfo: the ``/proc/meminfo`` file.
        gpu_load_files: Jetson GPU load files to try, in order.
    """

    def __init__(
        self,
        *,
        thermal_root: Path = _THERMAL,
        meminfo: Path = _PROC_MEMINFO,
        gpu_load_files: tuple[Path, ...] = _JETSON_GPU_LOAD,
    ) -> None:
        self._thermal_root = thermal_root
        self._meminfo = meminfo
        self._gpu_load_files = gpu_load_files
        self._build = dict(build_versions())
        self._nvml = _Nvml()

    def describe(self) -> list[Metric]:
        """Nothing: a registry with auto_describe must not read the host at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read each source now; a source that is absent yields its family without samples."""
        build = GaugeMetricFamily(
            f"{_NS}_build_info",
            "Always 1; the labels say which continuum, Python, ONNX Runtime and TensorRT the "
            'agent runs ("none" where not installed).',
            labels=sorted(self._build),
        )
        build.add_metric([self._build[k] for k in sorted(self._build)], 1.0)
        yield build
        yield self._load()
        yield from self._memory()
        yield self._temperatures()
        yield from self._gpus()

    def _load(self) -> Metric:
        family = GaugeMetricFamily(
            f"{_NS}_host_load_average",
            "Host load average (runnable and uninterruptible tasks) over the period.",
            labels=["period"],
        )
        try:
            loads = os.getloadavg()
        except (AttributeError, OSError):  # not on this OS
            return family
        for period, value in zip(("1m", "5m", "15m"), loads, strict=True):
            family.add_metric([period], value)
        return family

    def _memory(self) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            f"{_NS}_host_memory_total_bytes", "Host physical memory (MemTotal of /proc/meminfo)."
        )
        available = GaugeMetricFamily(
            f"{_NS}_host_memory_available_bytes",
            "Host memory available to new work without swapping (MemAvailable of "
            "/proc/meminfo); on a Jetson it is the GPU's memory too.",
        )
        fields = _meminfo(self._meminfo)
        if "MemTotal" in fields:
            total.add_metric([], fields["MemTotal"])
        if "MemAvailable" in fields:
            available.add_metric([], fields["MemAvailable"])
        yield total
        yield available

    def _temperatures(self) -> Metric:
        family = GaugeMetricFamily(
            f"{_NS}_host_temperature_celsius",
            "Temperature of each sysfs thermal zone (CPU, GPU, SoC...), by zone and its type.",
            labels=["zone", "type"],
        )
        try:
            zones = sorted(self._thermal_root.glob("thermal_zone*"))
        except OSError:
            return family
        for zone in zones:
            millidegrees = _read_number(zone / "temp")
            if millidegrees is None:
                continue  # a zone whose sensor is off reads EINVAL or ENODATA
            kind = _read_text(zone / "type") or "unknown"
            family.add_metric([zone.name, kind], millidegrees / 1000.0)
        return family

    def _gpus(self) -> Iterator[Metric]:
        utilization = GaugeMetricFamily(
            f"{_NS}_gpu_utilization_ratio",
            "Share of the last sample period the GPU was busy (0..1), by GPU index and name.",
            labels=["gpu", "name"],
        )
        used = GaugeMetricFamily(
            f"{_NS}_gpu_memory_used_bytes",
            "GPU memory in use (NVML; a Jetson shares host memory and reports none).",
            labels=["gpu", "name"],
        )
        total = GaugeMetricFamily(
            f"{_NS}_gpu_memory_total_bytes",
            "GPU memory installed (NVML; a Jetson shares host memory and reports none).",
            labels=["gpu", "name"],
        )
        temperature = GaugeMetricFamily(
            f"{_NS}_gpu_temperature_celsius",
            "GPU die temperature (NVML; a Jetson's is its GPU thermal zone).",
            labels=["gpu", "name"],
        )
        readings = self._nvml.read()
        for reading in readings:
            labels = [reading.index, reading.name]
            utilization.add_metric(labels, reading.utilization)
            used.add_metric(labels, reading.memory_used)
            total.add_metric(labels, reading.memory_total)
            temperature.add_metric(labels, reading.temperature)
        if not readings:
            for path in self._gpu_load_files:
                per_mille = _read_number(path)
                if per_mille is not None:
                    utilization.add_metric(["0", "jetson"], per_mille / 1000.0)
                    break
        yield from (utilization, used, total, temperature)


class _GpuReading:
    """One NVML device's numbers at this scrape."""

    __slots__ = ("index", "memory_total", "memory_used", "name", "temperature", "utilization")

    def __init__(
        self,
        index: str,
        name: str,
        utilization: float,
        memory_used: float,
        memory_total: float,
        temperature: float,
    ) -> None:
        self.index = index
        self.name = name
        self.utilization = utilization
        self.memory_used = memory_used
        self.memory_total = memory_total
        self.temperature = temperature


class _Nvml:
    """NVML through ``pynvml`` (nvidia-ml-py), imported and initialised on the first scrape.

    Without the module or the driver it gives up once and reads nothing from then on: a scrape
    must stay cheap, and a box does not grow a GPU while the agent runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self._failed = False

    def _init(self) -> Any:
        if self._module is None and not self._failed:
            try:
                module = importlib.import_module("pynvml")
                module.nvmlInit()
            except Exception as error:  # ImportError, NVMLError (no driver, no device)
                _log.debug("no NVML GPU metrics: %s", error)
                self._failed = True
            else:
                self._module = module
        return self._module

    def read(self) -> list[_GpuReading]:
        with self._lock:
            nvml = self._init()
            if nvml is None:
                return []
            readings = []
            try:
                for i in range(int(nvml.nvmlDeviceGetCount())):
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                    name = nvml.nvmlDeviceGetName(handle)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    readings.append(
                        _GpuReading(
                            index=str(i),
                            name=name.decode() if isinstance(name, bytes) else str(name),
                            utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                            memory_used=float(memory.used),
                            memory_total=float(memory.total),
                            temperature=float(
                                nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                            ),
                        )
                    )
            except Exception as error:  # a GPU that fell off the bus: skip this scrape
                _log.warning("NVML GPU metrics skipped this scrape: %s", error)
                return []
            return readings


def _meminfo(path: Path) -> dict[str, float]:
    """Return /proc/meminfo's fields in bytes (the file says kB, meaning KiB)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if parts[1:] == ["kB"] else 1
            fields[key.strip()] = float(int(parts[0]) * scale)
    return fields


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_number(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
