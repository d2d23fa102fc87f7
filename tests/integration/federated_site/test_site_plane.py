"""A site's data plane on real mosquittos: the site broker bridged to the central one carries
status, telemetry, desired state and receipts, never a federated pipeline's samples or labels;
the site ingest stores those at the site and sends the receipts there."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cloud_head.ingest import SiteIngest
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum.wire import identities, topics
from continuum.wire.messages import StoredReceipt
from tests.integration.federated_site._plane import (
    CANARY,
    PIPELINE,
    SITES,
    TENANT,
    Client,
    Plane,
    make_batch,
    make_spec,
    wait_for,
)

pytestmark = pytest.mark.integration


def _bridged(plane: Plane, site: str) -> None:
    """Wait until ``site``'s bridge is connected (mosquitto logs it on the central broker)."""
    identity = f"bridge.{site}@{TENANT}"
    wait_for(lambda: identity in plane.central.log_path.read_text())


class TestBridge:
    def test_status_and_telemetry_cross_samples_and_labels_do_not(
        self, plane: Plane, tmp_path: Path
    ) -> None:
        node = SITES["hosp-lux"]
        _bridged(plane, "hosp-lux")
        watcher = Client(plane.operator)
        watcher.subscribe(topics.tenant_filter(TENANT))
        time.sleep(0.5)
        box = Client(plane.nodes[node])
        try:
            box.send(topics.node_status(TENANT, node), b'{"online": true}', retain=True)
            box.send(topics.samples(TENANT, PIPELINE, node), make_batch(node, range(1, 4)))
            box.send(topics.feedback(TENANT, PIPELINE, node), b"label-of-" + node.encode())
            box.send(topics.telemetry(TENANT, PIPELINE, node), b"window")
            wait_for(lambda: topics.telemetry(TENANT, PIPELINE, node) in watcher.topics())
            time.sleep(1.0)  # anything else the bridge would forward has had its time
            seen = watcher.topics()
            assert topics.node_status(TENANT, node) in seen
            assert not [t for t in seen if "/samples/" in t or "/feedback/" in t], seen
            canary = np.float32(CANARY).tobytes()
            assert not [p for p in watcher.payloads() if canary in p]
        finally:
            box.close()
            watcher.close()
        plane.central.stop()  # its persistence file holds every retained and queued message
        assert (
            np.float32(CANARY).tobytes()
            not in (plane.central.data_dir / "mosquitto.db").read_bytes()
        )

    def test_desired_state_reaches_the_sites_node_only_and_stays_retained_there(
        self, plane: Plane
    ) -> None:
        lux, metz = SITES["hosp-lux"], SITES["hosp-metz"]
        _bridged(plane, "hosp-lux")
        _bridged(plane, "hosp-metz")
        control = Client(plane.control)
        try:
            # Published while the bridges are up, before the node subscribes: the site broker
            # must hold it retained for the node's later subscription (as an artifact chunk).
            control.send(topics.node_desired(TENANT, lux), b"desired-lux", retain=True)
            control.send(topics.node_desired(TENANT, metz), b"desired-metz", retain=True)
            time.sleep(1.0)
            box = Client(plane.nodes[lux])
            box.subscribe(topics.node_desired(TENANT, lux))
            try:
                wait_for(lambda: b"desired-lux" in box.payloads())
                assert [r for t, p, r in box.got if p == b"desired-lux"] == [True]
                time.sleep(0.5)
                assert b"desired-metz" not in box.payloads()
            finally:
                box.close()
        finally:
            control.close()
        plane.sites["hosp-lux"].stop()
        assert (
            b"desired-metz" not in (plane.sites["hosp-lux"].data_dir / "mosquitto.db").read_bytes()
        )

    def test_a_bridge_cannot_speak_for_another_sites_node(self, plane: Plane) -> None:
        """The bridge identity's ACL on the central broker names its own site's nodes only."""
        lux_bridge = plane.sites["hosp-lux"].bridge
        metz = SITES["hosp-metz"]
        rules = lux_bridge.central_acl()
        assert not [r for r in rules if metz in r]
        assert f"topic write {topics.node_status(TENANT, SITES['hosp-lux'])}" in rules
        assert not [r for r in rules if "/samples/" in r or "/feedback/" in r]


class TestSiteIngest:
    def test_stores_at_the_site_and_sends_the_receipt_there(
        self, plane: Plane, tmp_path: Path
    ) -> None:
        node = SITES["hosp-metz"]
        root = tmp_path / "hosp-metz" / "data"
        ingest = SiteIngest(
            TENANT,
            [make_spec()],
            samples=SampleStore(root / "samples"),
            labels=LabelStore(root / "labels.db"),
            state_dir=root / "state",
            broker=plane.ingest["hosp-metz"],
            client_id=identities.ingest_identity(TENANT, 0),
        ).start()
        box = Client(plane.nodes[node])
        box.subscribe(topics.node_stored(TENANT, node))
        time.sleep(0.5)
        try:
            box.send(topics.samples(TENANT, PIPELINE, node), make_batch(node, range(1, 6)))
            box.send(topics.samples(TENANT, PIPELINE, node), make_batch(node, range(1, 6)))
            wait_for(lambda: len(box.payloads()) >= 2)
            receipts = [StoredReceipt.from_payload(p) for p in box.payloads()]
            assert all(r.seqs == [(1, 5)] for r in receipts), receipts
            table = SampleStore(root / "samples").read(TENANT, PIPELINE)
            assert table.num_rows == 5  # the resend is stored once
            assert ingest.stats()["stored"] == 5
        finally:
            box.close()
            ingest.stop()
