"""Desired state per node: what each node should serve, persisted, published retained on change.

This is the cloud half of the device shadow (DESIGN.md §5): the rollout decides, the book
stores a node's whole desired state with a generation one higher than the last, and
publishes it retained at QoS 1 on ``ctm/{tenant}/nodes/{node}/desired`` so a node that
reconnects reads its latest orders. The controller's own records live beside it in the same
SQLite file (``cloud_head._pipeline_state.PipelineStateStore``), not in this book.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_head._pipeline_state import connect_state_file
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState, chunk_layout

if TYPE_CHECKING:
    from cloud_head.registry import ModelVersion

__all__ = ["DesiredStateBook", "desired_model"]


class DesiredStateBook:
    """The desired model per node and pipeline, persisted, published retained on change.

    ``publish(topic, payload)`` must deliver retained at QoS 1 (it raises if it cannot);
    the new state is stored only once it was published.
    """

    def __init__(self, path: Path, tenant: str, publish: Callable[[str, bytes], None]) -> None:
        self.path = Path(path)
        self.tenant = tenant
        self._publish = publish
        self._lock = threading.Lock()
        self._db = connect_state_file(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS desired (tenant TEXT, node TEXT, generation INTEGER, "
            "pipelines TEXT, PRIMARY KEY (tenant, node))"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get(self, node: str) -> DesiredState | None:
        """Return the node's desired state, if any was ever set."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
        if row is None:
            return None
        pipelines = {k: DesiredModel(**v) for k, v in json.loads(row[1]).items()}
        return DesiredState(
            node=node, pipelines=pipelines, issued_at=time.time(), generation=int(row[0])
        )

    def assign(self, node: str, pipeline: str, model: DesiredModel) -> DesiredState:
        """Set what ``node`` should serve for ``pipeline`` and publish its whole desired state."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
            generation = 1 if row is None else int(row[0]) + 1
            pipelines = {} if row is None else json.loads(row[1])
            pipelines[pipeline] = model.model_dump(mode="json")
            state = DesiredState(
                node=node,
                pipelines={k: DesiredModel(**v) for k, v in pipelines.items()},
                issued_at=time.time(),
                generation=generation,
            )
            self._publish(topics.node_desired(self.tenant, node), state.to_payload())
            self._db.execute(
                "INSERT INTO desired VALUES (?,?,?,?) ON CONFLICT(tenant, node) DO UPDATE SET "
                "generation=excluded.generation, pipelines=excluded.pipelines",
                (self.tenant, node, generation, json.dumps(pipelines, sort_keys=True)),
            )
        return state

    def serving_target(self, node: str, pipeline: str) -> str | None:
        """Return the version ``node`` is told to serve for ``pipeline``."""
        state = self.get(node)
        if state is None or pipeline not in state.pipelines:
            return None
        return state.pipelines[pipeline].version


def desired_model(version: ModelVersion, chunk_size: int) -> DesiredModel:
    """Return the desired-state entry that tells a node to fetch and serve ``version``.

    The chunks are laid out as ``publish_artifact`` laid out the version's manifest (the
    same function of its size and ``chunk_size``), so both describe the same chunks.
    """
    size, chunks = chunk_layout(version.size_bytes, chunk_size)
    return DesiredModel(
        model=version.model,
        version=version.version,
        sha256=version.sha256,
        signature=version.signature,
        size_bytes=version.size_bytes,
        chunk_size=size,
        chunks=chunks,
    )
