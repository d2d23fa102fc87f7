"""The no-leak inspection finds a site's row wherever it is planted, and nothing where none is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud_head.store import SampleStore
from continuum.spec import DataClass
from continuum.wire import codec
from pipelines.demo._hospitals_evidence import inspect_files, rows_by_site
from pipelines.hospitals.data import DRIFT_SITE, SITES, load_splits, recalibrated

TENANT = "medica"
PIPELINE = "hospital-screening"


def _write_store(root: Path, rows: list[np.ndarray]) -> None:
    store = SampleStore(root)
    records = tuple(
        codec.SampleRecord(seq=i + 1, captured_at_ns=i, tensor=np.asarray(r, dtype=np.float32))
        for i, r in enumerate(rows)
    )
    store.append(TENANT, codec.SampleBatch(PIPELINE, "n", "v1", DataClass.RESTRICTED, records))
    store.flush()


def _layout(tmp_path: Path) -> dict[str, object]:
    sites = {s: tmp_path / "sites" / s / "data" for s in SITES}
    brokers = {s: tmp_path / "sites" / s / "mosquitto.db" for s in SITES}
    central = tmp_path / "broker" / "mosquitto.db"
    for path in [*brokers.values(), central]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"retained status and telemetry only")
    (tmp_path / "cloud" / "state").mkdir(parents=True)
    (tmp_path / "cloud" / "state" / "rounds.sqlite3").write_bytes(b"weights, counts")
    return {
        "tenant": TENANT,
        "pipeline": PIPELINE,
        "site_dirs": sites,
        "site_brokers": brokers,
        "central_broker": central,
    }


class TestInspectFiles:
    def test_rows_at_their_own_site_are_no_leak(self, tmp_path: Path) -> None:
        layout = _layout(tmp_path)
        stream = load_splits().stream
        for site in SITES:
            _write_store(tmp_path / "sites" / site / "data" / "samples", list(stream[site].x[:5]))
        drifted = recalibrated(stream[DRIFT_SITE].x[:3])
        (tmp_path / "sites" / DRIFT_SITE / "mosquitto.db").write_bytes(drifted.tobytes())
        found = inspect_files(tmp_path, rows=rows_by_site(), **layout)  # type: ignore[arg-type]
        assert found["leaks"] == []
        assert found["stored_at_site"] == dict.fromkeys(SITES, 5)

    def test_finds_a_row_in_the_central_store_another_site_a_broker_and_a_head_file(
        self, tmp_path: Path
    ) -> None:
        layout = _layout(tmp_path)
        stream = load_splits().stream
        _write_store(tmp_path / "cloud" / "store", [stream["hosp-lux"].x[0]])
        _write_store(
            tmp_path / "sites" / "hosp-metz" / "data" / "samples", [stream["hosp-lux"].x[1]]
        )
        (tmp_path / "broker" / "mosquitto.db").write_bytes(
            b"xx" + stream["hosp-metz"].x[2].tobytes()
        )
        (tmp_path / "cloud" / "state" / "rounds.sqlite3").write_bytes(
            recalibrated(stream[DRIFT_SITE].x[:1]).tobytes()
        )
        found = inspect_files(tmp_path, rows=rows_by_site(), **layout)  # type: ignore[arg-type]
        where = {leak["where"] for leak in found["leaks"]}
        assert where == {
            "central sample store",
            "hosp-metz's store",
            "central broker persistence (mosquitto.db)",
            "cloud/state/rounds.sqlite3",
        }
