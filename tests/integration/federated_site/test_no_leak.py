"""The hospitals loop, short, then every place a restricted sample could have gone: no
sample of a hospital is found outside it (issue 17's "done when")."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.demo._hospitals import run_hospitals
from pipelines.demo._options import DemoOptions
from pipelines.hospitals.data import SITES
from tests.conftest import own_ray_connection

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_no_restricted_sample_is_found_outside_its_site(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Run the scenario (sites' brokers, ingests and Ray workers, federated first model and
    retraining), then search every store, broker persistence file and head file for each
    site's rows, and every Ray task and actor that read site data for its node."""
    options = DemoOptions.for_scenario(
        "hospitals", duration_s=70.0, drift_at_s=20.0, workdir=tmp_path / "demo", live=False
    )
    with own_ray_connection(request):
        report = run_hospitals(options)
    evidence = report["evidence"]
    # the loop did store samples, each at its own site...
    assert all(evidence["stored_at_site"][site] > 0 for site in SITES), evidence
    # ...and none anywhere else: not centrally, not at another site, not in a broker's
    # persistence file, not in a file the head wrote (registry, audit, rounds)
    assert evidence["leaks"] == []
    assert evidence["central_store_rows"] == 0
    assert evidence["head_files_scanned"] > 0
    assert all(size > 0 for size in evidence["broker_bytes_scanned"].values())
    # every process that read a site's data ran on that site's node
    placement = evidence["ray"]
    assert placement["off_site"] == []
    assert set(placement["ran"]["federated-train"]) == set(SITES)
    assert set(placement["ran"]["federated-gate"]) == set(SITES)
    assert set(placement["ran"]["site ingest"]) == set(SITES)
    assert report["targets"]["zero_restricted_samples_outside_their_site"]
