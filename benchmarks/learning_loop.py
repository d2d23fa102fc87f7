"""What the loop's selection buys: ours against uploading everything and against random picks.

For each camera fault kind, three reduced ``continuum demo`` runs of the whole loop (real
edge-agent processes whose cameras never repeat a frame, mosquitto, ingest, the Parquet store,
Ray Train, the gate, the canary and the rollout, exactly as the demo runs them; the fault at
site lux-2 from ``--drift-at`` on), which differ only in the uplink policy:

- **ours**: the demo pipeline's own policy (``pipelines/digits_inspection.py``: low
  confidence, a boost while a drift detector fires, a small random share);
- **random**: ``select.random(share)`` where ``share`` is the uplinked share the *ours* run of
  the same kind measured: random picks at the same budget;
- **all**: ``select.random(1.0)``: every frame uplinked, the upload-everything oracle.

Each arm keeps the pipeline's drift detectors (so telemetry reports drift alike), its link
budget, labels, retraining trigger, gate and rollout.  The arms run one after the other (a
run is minutes; the kinds and arms are not interleaved within a run) in the order ours,
random, all for each kind.  Each run's ``report.json`` gives, at the faulty camera:

- **reserved accuracy** (never streamed, never uplinked) under the fault: right after the
  onset (the serving model, no loop) and at the end (the version served then);
- **uplink**: samples uplinked over the whole run by every agent, and their wire bytes (each
  record the same size: ``RECORD_BYTES``, a 1x8x8 float32 tensor in the sample codec);
- **seconds to recovery**: onset until the faulty camera first served a version within 0.05
  of its pre-drift reserved accuracy (none: not recovered in the run).

Goal (issue 18): ours reaches >= 90% of the all arm's accuracy gain (end minus right after
the onset) with <= 10% of its uplink bytes.  Verdicts are computed per kind from these runs.

Run: ``python benchmarks/learning_loop.py`` (three kinds x three arms x (170 s + start-up):
about 35 minutes on 2 cores; ``--json PATH`` for the result), or a short check:
``python benchmarks/learning_loop.py --kinds inversion --duration 75 --drift-at 30`` (three
runs, about 5 minutes; too short for the loop to finish recovering: figures, not verdicts).
Each run's log and report stay under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness

DEFAULT_KINDS = ("inversion", "rotation", "mirror")
ARMS = ("ours", "random", "all")
RECOVERY_TOLERANCE = 0.05
GAIN_SHARE_MIN = 0.9
BYTES_SHARE_MAX = 0.1

#: The demo's pipeline with its uplink policy replaced (written per arm into the workdir).
_ARM_MODULE = '''"""The demo's digits pipeline, uplink policy of arm {arm!r} (learning_loop)."""

import pipelines.digits_inspection as _original
from continuum import select


def _arm():
    spec = _original.pipe.spec
    uplink = spec.uplink.model_copy(
        update={{"policy": select.random({rate!r}), "drift": spec.uplink.detectors}}
    )
    return spec.model_copy(update={{"uplink": uplink}})


pipe = _arm()
'''

#: Runs ``continuum demo`` with the digits scenario's pipeline module swapped for an arm's.
_BOOTSTRAP = """
import dataclasses, sys
sys.path.insert(0, {folder!r})
from pipelines.demo import _scenarios
scenarios = _scenarios._scenarios()
scenarios["digits"] = dataclasses.replace(scenarios["digits"], pipeline_module={module!r})
from continuum.cli import main
sys.exit(main())
"""


def record_bytes() -> int:
    """Wire bytes of one uplinked digits sample (the codec's per-record size in a batch)."""
    import numpy as np

    from continuum._data_class import DataClass
    from continuum.wire import SampleBatch, SampleRecord
    from continuum.wire.codec import encode_samples

    def batch(n: int) -> bytes:
        records = tuple(
            SampleRecord(
                seq=i,
                captured_at_ns=i,
                tensor=np.zeros((1, 8, 8), np.float32),
                prediction=1,
                confidence=0.5,
            )
            for i in range(n)
        )
        return encode_samples(SampleBatch("p", "n", "v", DataClass("internal"), records))

    return (len(batch(101)) - len(batch(1))) // 100


def run_arm(kind: str, arm: str, rate: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """Run one reduced demo of ``kind`` with ``arm``'s policy; return its figures."""
    workdir = args.workdir / kind / arm
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.workdir / kind / f"{arm}.log"
    demo = [
        "demo",
        "--drift",
        kind,
        "--duration",
        str(args.duration),
        "--drift-at",
        str(args.drift_at),
        "--agents",
        str(args.agents),
        "--workdir",
        str(workdir),
        "--no-live",
    ]
    if rate is None:
        code = "import sys; from continuum.cli import main; sys.exit(main())"
    else:
        folder = args.workdir / kind / "modules"
        folder.mkdir(parents=True, exist_ok=True)
        module = f"learning_loop_arm_{arm}"
        (folder / f"{module}.py").write_text(_ARM_MODULE.format(arm=arm, rate=rate))
        code = _BOOTSTRAP.format(folder=str(folder), module=module)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        exit_code = subprocess.run(
            [sys.executable, "-c", code, *demo], stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    seconds = time.monotonic() - started
    report_path = workdir / "report.json"
    if not report_path.exists():
        return {"kind": kind, "arm": arm, "error": f"no report (exit {exit_code}); see {log_path}"}
    return figures(kind, arm, rate, json.loads(report_path.read_text()), exit_code, seconds)


def figures(
    kind: str, arm: str, rate: float | None, report: dict[str, Any], code: int, seconds: float
) -> dict[str, Any]:
    """Return one run's figures at its faulty camera, and its uplink over the whole run."""
    (faulty,) = [a for a in report["agents"].values() if a["drifted_camera"]]
    uplinked = sum(a["uplinked"] for a in report["agents"].values())
    frames = sum(a["frames"] for a in report["agents"].values())
    return {
        "kind": kind,
        "arm": arm,
        "random_rate": rate,
        "exit_code": code,
        "run_seconds": round(seconds, 1),
        "reserved_before": faulty["accuracy_before_drift"],
        "reserved_after_drift": faulty["accuracy_after_drift"],
        "reserved_end": faulty["accuracy_after_recovery"],
        "reserved_best_registered": max(
            (v["drifted"] for v in report["versions"].values() if v.get("parent")),
            default=None,
        ),
        "seconds_to_recovery": faulty["seconds_to_recovery"],
        "detected_s": faulty["drift_detection"]["first_s"],
        "frames": frames,
        "uplinked": uplinked,
        "uplink_share": uplinked / frames if frames else None,
        "trainings": len(report["trainings"]) - 1,
    }


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def judge(report: harness.Report, kind: str, rows: dict[str, dict[str, Any]]) -> None:
    """Compute the kind's verdicts from its three runs."""
    ours, rand, everything = rows.get("ours"), rows.get("random"), rows.get("all")
    if not (ours and everything) or "error" in ours or "error" in everything:
        report.verdict(harness.Verdict(f"{kind}: the runs", "ours and all ran", "error", False))
        return
    after = ours["reserved_after_drift"]
    gains = [
        None if r["reserved_end"] is None or after is None else r["reserved_end"] - after
        for r in (ours, everything)
    ]
    share = gains[0] / gains[1] if None not in gains and gains[1] > 0 else None  # type: ignore[operator]
    bytes_share = ours["uplinked"] / everything["uplinked"] if everything["uplinked"] else None
    report.verdict(
        harness.Verdict(
            name=f"{kind}: ours' share of the all arm's accuracy gain",
            target=f">= {GAIN_SHARE_MIN}",
            measured=_f(share, ".2f"),
            met=share is not None and share >= GAIN_SHARE_MIN,
        )
    )
    report.verdict(
        harness.Verdict(
            name=f"{kind}: ours' uplink bytes / the all arm's",
            target=f"<= {BYTES_SHARE_MAX}",
            measured=_f(bytes_share, ".3f"),
            met=bytes_share is not None and bytes_share <= BYTES_SHARE_MAX,
        )
    )
    if rand and "error" not in rand and rand["reserved_end"] is not None:
        margin = (ours["reserved_end"] or 0.0) - rand["reserved_end"]
        report.verdict(
            harness.Verdict(
                name=f"{kind}: ours' end accuracy minus random's at the same budget",
                target="> 0 (one run each: a single draw)",
                measured=f"{margin:+.3f}",
                met=margin > 0.0,
            )
        )


def print_rows(rows: list[dict[str, Any]], per_record: int) -> None:
    """Print one line per run."""
    table = []
    for r in rows:
        if "error" in r:
            table.append([f"{r['kind']} / {r['arm']}", "ERROR: " + r["error"], *[""] * 8])
            continue
        table.append(
            [
                f"{r['kind']} / {r['arm']}",
                _f(r["random_rate"], ".3f") if r["random_rate"] is not None else "demo's",
                _f(r["reserved_before"]),
                _f(r["reserved_after_drift"]),
                _f(r["reserved_end"]),
                _f(r["reserved_best_registered"]),
                _f(r["seconds_to_recovery"], ".0f"),
                f"{r['uplinked']:,}",
                f"{r['uplinked'] * per_record / 1e6:.2f}",
                _f(r["uplink_share"], ".1%"),
            ]
        )
    harness.print_table(
        "Runs (reserved accuracy under the fault at the faulty camera; uplink: all agents)",
        [
            "kind / arm",
            "random rate",
            "before",
            "no loop",
            "end",
            "best",
            "recov s",
            "uplinked",
            "MB",
            "share",
        ],
        table,
    )


def main(argv: list[str] | None = None) -> int:
    """Run every kind's three arms; 0 when every verdict was met."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds", default=",".join(DEFAULT_KINDS), help="comma-separated fault kinds"
    )
    parser.add_argument("--duration", type=float, default=170.0, help="seconds per run (170)")
    parser.add_argument("--drift-at", type=float, default=35.0, help="fault onset, s (35)")
    parser.add_argument("--agents", type=int, default=2, help="edge agents per run (2)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("learning-loop-runs"), help="where runs are kept"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    from pipelines.digits.faults import DRIFT_KINDS

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(DRIFT_KINDS))
    if unknown:
        parser.error(f"unknown fault kind(s) {', '.join(unknown)}; use {', '.join(DRIFT_KINDS)}")
    args.workdir = args.workdir.resolve()
    report = harness.Report("learning_loop", paths=[args.workdir.parent])
    per_record = record_bytes()
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        by_arm: dict[str, dict[str, Any]] = {}
        for arm in ARMS:
            rate: float | None = None
            if arm == "all":
                rate = 1.0
            elif arm == "random":
                share = by_arm["ours"].get("uplink_share")
                if share is None:
                    continue
                rate = round(float(share), 4)
            print(f"{kind} / {arm}: one reduced demo run ({args.duration:g} s) ...", flush=True)
            row = run_arm(kind, arm, rate, args)
            by_arm[arm] = row
            rows.append(row)
            done = row.get("error") or f"done in {row['run_seconds']:.0f} s"
            print(f"    {done}", flush=True)
            if "error" not in row:
                report.case(
                    f"{kind} / {arm}: reserved end",
                    [row["reserved_end"] if row["reserved_end"] is not None else float("nan")],
                    "accuracy",
                    **{k: v for k, v in row.items() if k not in ("kind", "arm")},
                    uplink_bytes=row["uplinked"] * per_record,
                )
        judge(report, kind, by_arm)
    print_rows(rows, per_record)
    print(f"(a sample is {per_record} bytes on the wire; runs under {args.workdir})")
    result = report.finish(args.json)
    return 0 if all(v["met"] for v in result["verdicts"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
