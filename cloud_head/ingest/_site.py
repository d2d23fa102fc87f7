"""Ingest at a site: the same ingest, on the site's broker, writing the site's own stores.

Where the residency plan trains a pipeline federated, its samples and delayed labels stay at
their site (``cloud_head._site_plane``): the site's agents publish them on the site's
broker, which does not bridge them out, and ``SiteIngest`` stores them there.  It is the
central ingest unchanged (``IngestService`` on an ``IngestWorker``: de-duplication by seen
ids, acknowledgement after the durable write, receipts that end a sample at the edge), so
the invariant holds the same: nothing selected is lost, nothing is stored twice.

``SiteIngestActor`` runs it as a Ray actor placed by the site's labels
(``label_selector={"continuum.io/site": site}``), on the site's node, which alone knows
where the site's data lives (``CONTINUUM_SITE_DATA``: the stores are resolved there, by
``cloud_head.federated.site_stores``).  Nothing it stores is returned: ``stats`` gives
counts only, which may cross.

No residency check runs here (it needs the central fleet registry): the site broker's ACL
already admits only the site's own nodes, each acting as itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray

from cloud_head.ingest._service import IngestService
from cloud_head.ingest._worker import IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum.spec import PipelineSpec
from continuum.wire.mqtt import BrokerSettings

__all__ = ["SiteIngest", "SiteIngestActor"]

_log = logging.getLogger("cloud_head.ingest")


class SiteIngest:
    """One site's ingest: ``IngestService`` on the site broker over the site's stores.

    ``seen_db`` (the ids already stored) and ``audit_dir`` (the summaries of what was stored
    and refused) sit next to the site's stores: sample ids are not data, but nothing about
    them needs to leave either.
    """

    def __init__(
        self,
        tenant: str,
        pipelines: Iterable[PipelineSpec],
        *,
        samples: SampleStore,
        labels: LabelStore,
        state_dir: Path,
        broker: BrokerSettings,
        client_id: str,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._labels = labels
        self._service = IngestService(
            tenant,
            list(pipelines),
            samples,
            labels,
            state_dir / "seen.db",
            audit_dir=state_dir / "audit",
        )
        self._worker = IngestWorker(self._service, broker, client_id=client_id)

    def start(self) -> SiteIngest:
        """Connect to the site broker and start storing; return self."""
        self._worker.start()
        return self

    def stats(self) -> dict[str, Any]:
        """Return the counters (counts only: they may cross the site's border)."""
        return self._worker.stats()

    def stop(self) -> None:
        """Acknowledge what was written and disconnect; the site broker keeps the session."""
        self._worker.stop()
        self._service.close()
        self._labels.close()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SiteIngestActor:
    """``SiteIngest`` on the site's node; place it with the site's label selector.

    The stores are resolved on the node (``site_stores``), from its ``CONTINUUM_SITE_DATA``;
    the central process never learns the path.  ``broker`` is the site broker with the
    tenant's ingest identity of ``replica``.
    """

    def __init__(
        self,
        tenant: str,
        specs: list[dict[str, Any]],
        broker: BrokerSettings,
        client_id: str,
    ) -> None:
        from cloud_head.federated.site_data import SITE_LABELS_ENV, site_stores

        logging.basicConfig(level=logging.INFO)
        pipelines = [PipelineSpec.model_validate(s) for s in specs]
        if not pipelines:
            raise ValueError("a site ingest needs at least one pipeline")
        stores = site_stores(tenant, pipelines[0].name)
        self._node_id = ray.get_runtime_context().get_node_id()
        # The seen ids and audit summaries sit beside the label database, on the site's disk.
        local = os.environ.get(SITE_LABELS_ENV) if "://" in stores.root else None
        state_dir = Path(local).parent / "state" if local else Path(stores.root) / "state"
        self._ingest = SiteIngest(
            tenant,
            pipelines,
            samples=stores.samples,
            labels=stores.labels,
            state_dir=state_dir,
            broker=broker,
            client_id=client_id,
        ).start()

    def node_id(self) -> str:
        """Return the Ray node this ingest runs on (to check it is the site's)."""
        return str(self._node_id)

    def stats(self) -> dict[str, Any]:
        """Return the counters."""
        return self._ingest.stats()

    def stop(self) -> None:
        """Stop storing; the site broker keeps the session for the next start."""
        self._ingest.stop()
