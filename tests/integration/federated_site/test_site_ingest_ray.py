"""The site ingest as a Ray actor placed by the site's label: it runs on the site's node,
resolves the site's stores from that node's ``CONTINUUM_SITE_DATA`` and stores each site's
samples there and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_head.ingest import SiteIngestActor
from cloud_head.store import SampleStore
from continuum.embedded import LocalRayCluster
from continuum.labels import SITE, TIER
from continuum.spec import DataClass
from continuum.wire import codec, identities, topics
from continuum.wire.messages import StoredReceipt
from tests.conftest import _test_python_path, own_ray_connection
from tests.integration.federated_site._plane import (
    CANARY,
    PIPELINE,
    SITES,
    TENANT,
    Client,
    Plane,
    make_spec,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """A cloud head and one Ray node per hospital, each with its own site data folder."""

    roots = {site: tmp_path_factory.mktemp(site) for site in SITES}
    cluster = LocalRayCluster(
        tmp_path_factory.mktemp("ray"),
        head_labels={TIER: "cloud", SITE: "fra-1"},
        head_cpus=1,
        edge_nodes=[{TIER: "edge", SITE: site} for site in SITES],
        edge_env=[{"CONTINUUM_SITE_DATA": str(roots[site])} for site in SITES],
        dashboard=True,  # the state API: which node each actor runs on
        env={"PYTHONPATH": _test_python_path()},
    )
    with own_ray_connection(request):
        yield from _connected(cluster, roots)


def _connected(cluster: LocalRayCluster, roots: dict[str, Path]) -> Iterator[dict[str, Any]]:
    import ray

    try:
        cluster.start()
        cluster.connect("continuum-tests", log_to_driver=False)
        nodes = {
            n["Labels"][SITE]: n["NodeID"]
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n["Alive"] and n.get("Labels", {}).get(SITE) in SITES
        }
        yield {"roots": roots, "nodes": nodes, "dashboard": cluster.dashboard_url}
    finally:
        ray.shutdown()
        cluster.stop()


def _batch(node: str, marker: float, seqs: range) -> bytes:
    records = tuple(
        codec.SampleRecord(
            seq=s, captured_at_ns=s, tensor=np.array([marker, s, 1, 2], dtype=np.float32)
        )
        for s in seqs
    )
    return codec.encode_samples(
        codec.SampleBatch(PIPELINE, node, "v1", DataClass.RESTRICTED, records)
    )


def _markers(root: Path) -> set[float]:
    store = SampleStore(root / "samples")
    if not store.dates(TENANT, PIPELINE):
        return set()
    tensors = store.read(TENANT, PIPELINE, columns=["tensor"]).column("tensor").to_pylist()
    return {float(np.frombuffer(bytes(t), dtype="<f4")[0]) for t in tensors}


class TestSiteIngestOnItsNode:
    def test_each_sites_samples_are_stored_on_its_own_node_only(
        self, plane: Plane, site_cluster: dict[str, Any]
    ) -> None:
        import ray
        from ray.util.state import list_actors

        markers = {site: CANARY + i for i, site in enumerate(SITES)}
        actors = {
            site: SiteIngestActor.options(  # type: ignore[attr-defined]
                label_selector={SITE: site}
            ).remote(
                TENANT,
                [make_spec().model_dump(mode="json")],
                plane.ingest[site],
                identities.ingest_identity(TENANT, 0),
            )
            for site in SITES
        }
        boxes = {}
        try:
            placed = {s: ray.get(a.node_id.remote(), timeout=120) for s, a in actors.items()}
            assert placed == site_cluster["nodes"]
            for site, node in SITES.items():
                boxes[site] = Client(plane.nodes[node])
                boxes[site].subscribe(topics.node_stored(TENANT, node))
            time.sleep(0.5)
            for site, node in SITES.items():
                boxes[site].send(
                    topics.samples(TENANT, PIPELINE, node), _batch(node, markers[site], range(1, 9))
                )
            for site in SITES:
                wait_for(lambda site=site: bool(boxes[site].payloads()), timeout_s=60)
                receipt = StoredReceipt.from_payload(boxes[site].payloads()[0])
                assert receipt.seqs == [(1, 8)]
            for site, root in site_cluster["roots"].items():
                assert _markers(root) == {markers[site]}, site
            on = {
                a.node_id
                for a in list_actors(
                    address=site_cluster["dashboard"],
                    filters=[("class_name", "=", "SiteIngestActor")],
                )
                if a.state == "ALIVE"
            }
            assert on == set(site_cluster["nodes"].values())
        finally:
            for box in boxes.values():
                box.close()
            ray.get([a.stop.remote() for a in actors.values()], timeout=30)
            for actor in actors.values():
                ray.kill(actor)
