"""What every benchmark shares so a sceptic can check it: environment, rounds, verdicts, JSON.

A benchmark builds one ``Report``, measures its cases with ``alternate`` (A, B, A, B ...
within each round, so a noisy neighbour hits every case alike), records each case's values
with ``Report.case`` (median and min-max over rounds), computes its verdicts from those
values (``at_least`` / ``at_most`` / ``Verdict``) and ends with ``Report.finish``, which
prints the environment at start and end, the cases and the verdict table, and writes the
JSON result when ``--json PATH`` was given.  The JSON schema is the same for all of them::

    {"benchmark": str, "date": ISO-8601 UTC, "environment": {...},
     "cases": {name: {"unit", "median", "min", "max", "values", ...extra}},
     "verdicts": [{"name", "target", "measured", "met"}]}
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Report",
    "Spread",
    "Verdict",
    "add_arguments",
    "alternate",
    "at_least",
    "at_most",
    "environment",
    "print_table",
    "ratios",
]

#: Distributions whose versions the environment names when installed (import name: dist).
LIBRARIES = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "pyarrow": "pyarrow",
    "paho": "paho-mqtt",
    "ray": "ray",
    "torch": "torch",
    "safetensors": "safetensors",
}


@dataclass(frozen=True)
class Spread:
    """A case's values over rounds: the median and the min-max a reader needs to trust it."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """Return the spread of ``values`` (at least one)."""
        vals = tuple(float(v) for v in values)
        if not vals:
            raise ValueError("a spread needs at least one value: measure at least one round")
        return cls(statistics.median(vals), min(vals), max(vals), vals)

    def fmt(self, spec: str | None = None, unit: str = "") -> str:
        """Return ``median (min-max)`` formatted with ``spec``, ``unit`` after each number.

        Without ``spec``: whole numbers with thousands separators from 1,000 up, else four
        significant digits.
        """

        def one(x: float) -> str:
            if spec is not None:
                return format(x, spec)
            return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"

        if len(self.values) == 1:
            return f"{one(self.median)}{unit}"
        return f"{one(self.median)}{unit} ({one(self.low)}-{one(self.high)}{unit})"

    def __str__(self) -> str:
        return self.fmt()


@dataclass(frozen=True)
class Verdict:
    """One target checked against one measured figure; ``met`` is computed, never typed."""

    name: str
    target: str
    measured: str
    met: bool


def at_least(name: str, measured: Spread | float, target: float, unit: str = "") -> Verdict:
    """Return the verdict ``measured >= target`` (a spread is judged on its median)."""
    value = measured.median if isinstance(measured, Spread) else float(measured)
    shown = measured.fmt(unit=unit) if isinstance(measured, Spread) else f"{value:,.4g}{unit}"
    return Verdict(name, f">= {target:,.4g}{unit}", shown, value >= target)


def at_most(name: str, measured: Spread | float, target: float, unit: str = "") -> Verdict:
    """Return the verdict ``measured <= target`` (a spread is judged on its median)."""
    value = measured.median if isinstance(measured, Spread) else float(measured)
    shown = measured.fmt(unit=unit) if isinstance(measured, Spread) else f"{value:,.4g}{unit}"
    return Verdict(name, f"<= {target:,.4g}{unit}", shown, value <= target)


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> Spread:
    """Return the spread of the per-round ratios (rounds paired, so drift cancels)."""
    if len(numerator) != len(denominator):
        raise ValueError(
            f"ratios pair rounds: got {len(numerator)} and {len(denominator)} values; "
            "measure both cases in every round (see alternate)"
        )
    return Spread.of(n / d for n, d in zip(numerator, denominator, strict=True))


def alternate(
    cases: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Run every case once per round, in the given order, and return each case's values.

    Args:
        cases: name -> a callable measuring one run of that case and returning its figure.
        rounds: how many rounds; each case gets exactly one value per round.
        on_round: called after each round with its index (0-based) and that round's values,
            e.g. to print the round.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    values: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        this_round = {}
        for name, run in cases.items():
            this_round[name] = float(run())
            values[name].append(this_round[name])
        if on_round is not None:
            on_round(r, this_round)
    return values


def _run(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _filesystem(path: Path) -> dict[str, str]:
    """Return the type and device of the filesystem holding ``path`` (what fsync hits)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    df = _run(["df", "-T", str(existing)]).splitlines()
    fields = df[-1].split() if len(df) >= 2 else []
    return {
        "path": str(path),
        "type": _run(["stat", "-f", "-c", "%T", str(existing)]),
        "device": fields[0] if fields else "unknown",
        "df_type": fields[1] if len(fields) > 1 else "unknown",
        "mount": fields[-1] if fields else "unknown",
    }


def _mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        return "not installed"
    match = re.search(r"mosquitto version (\S+)", _run([binary, "-h"]))
    return match.group(1) if match else "unknown"


def environment(paths: Sequence[Path] = (), uses: Sequence[str] = ()) -> dict[str, Any]:
    """Return what the figures depend on: CPU, affinity, load, filesystems, versions.

    Versions are given of the ``LIBRARIES`` this process imported and of those named in
    ``uses`` (import names: what the benchmark's child processes import).
    """
    libraries = {}
    for module, dist in LIBRARIES.items():
        if module in sys.modules or module in uses:
            try:
                libraries[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                libraries[dist] = "imported, no metadata"
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": libraries,
        "mosquitto": _mosquitto_version(),
        "filesystems": [_filesystem(Path(p)) for p in paths],
    }


def _finite(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as None: strict JSON readers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(f"\n{title}")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def add_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """Add the flags every benchmark takes: ``--rounds`` and ``--json PATH``."""
    parser.add_argument(
        "--rounds", type=int, default=rounds, help="rounds; each case runs once per round"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON"
    )


@dataclass
class Report:
    """One benchmark run: the environment at start, the cases, the verdicts, the output.

    Create it before measuring (it records the load average then); ``paths`` are the
    directories whose filesystem matters (where the benchmark writes or fsyncs); ``uses``
    names libraries (import names, e.g. ``"paho"``) its child processes import.
    """

    benchmark: str
    paths: Sequence[Path] = ()
    uses: Sequence[str] = ()
    date: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.environment = environment(self.paths, self.uses)
        env = self.environment
        print(
            f"{self.benchmark} | {env['cpu_model']}, {env['cpu_count']} CPUs "
            f"(affinity {env['affinity']}), load {env['load_average'][0]:.2f} | "
            f"python {env['python']}, mosquitto {env['mosquitto']}"
        )
        for fs in env["filesystems"]:
            print(f"  filesystem of {fs['path']}: {fs['type']} on {fs['device']} ({fs['mount']})")

    def case(self, name: str, values: Iterable[float], unit: str, **extra: Any) -> Spread:
        """Record a case's per-round values (and any extra facts) and return their spread."""
        spread = Spread.of(values)
        self.cases[name] = {
            "unit": unit,
            "median": spread.median,
            "min": spread.low,
            "max": spread.high,
            "values": list(spread.values),
            **extra,
        }
        return spread

    def verdict(self, verdict: Verdict) -> Verdict:
        """Record a verdict and return it."""
        self.verdicts.append(verdict)
        return verdict

    def to_json(self) -> dict[str, Any]:
        """Return the result in the shared schema."""
        return {
            "benchmark": self.benchmark,
            "date": self.date,
            "environment": self.environment,
            "cases": self.cases,
            "verdicts": [asdict(v) for v in self.verdicts],
        }

    def finish(self, json_path: Path | None = None) -> dict[str, Any]:
        """Print the cases and verdicts, note the load at the end, write JSON; return it."""
        end = environment(self.paths, self.uses)
        self.environment["load_average_end"] = end["load_average"]
        self.environment["libraries"] = end["libraries"]  # what the run ended up importing
        if self.cases:
            print_table(
                "Cases (median over rounds, min-max in brackets)",
                ["case", "unit", "median (min-max)", "rounds"],
                [
                    [name, c["unit"], Spread.of(c["values"]).fmt(), str(len(c["values"]))]
                    for name, c in self.cases.items()
                ],
            )
        if self.verdicts:
            print_table(
                "Verdicts (computed from the measurement above)",
                ["verdict", "target", "measured", "met"],
                [
                    [v.name, v.target, v.measured, "MET" if v.met else "NOT MET"]
                    for v in self.verdicts
                ],
            )
        libs = ", ".join(f"{k} {v}" for k, v in self.environment["libraries"].items())
        print(
            f"\nload average start {self.environment['load_average'][0]:.2f}, "
            f"end {end['load_average'][0]:.2f}; {libs}"
        )
        result = self.to_json()
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
            print(f"wrote {json_path}")
        return result
