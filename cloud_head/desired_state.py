"""Desired state per node: what each node should serve, signed, persisted, published retained
on change and re-issued before it expires.

This is the cloud half of the device shadow (DESIGN.md §5): the rollout decides, the book
stores a node's whole desired state with a generation above the last (and at least its issue
time in microseconds, so it rises across the books of several pipelines), has the tenant's
signer sign the whole document with the release key (tenant, node, generation, issue time
and expiry included: ``continuum.signing.desired_message``; the book never holds the key)
and publishes it retained at QoS 1
on ``ctm/{tenant}/nodes/{node}/desired`` so a node that reconnects reads its latest orders.
Agents refuse a document that has expired, so ``refresh_expiring`` re-issues each one (same
orders, next generation) once half its validity has passed. An entry that takes a node to an
older version than the book told it before is marked ``rollback`` (signed): agents refuse
any other downgrade. The controller's own records live beside it in the same SQLite file
(``cloud_head._pipeline_state.PipelineStateStore``), not in this book.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_head._pipeline_state import connect_state_file
from cloud_head.signer import ReleaseSigner, release_signer
from continuum.errors import ConfigError
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState, chunk_layout, version_order

if TYPE_CHECKING:
    from cloud_head.registry import ModelVersion

__all__ = ["DESIRED_VALIDITY_S", "DesiredStateBook", "desired_model", "signed_desired_state"]

#: How long a published desired state stays valid (agents refuse it after): a day, re-issued
#: at half of it, so a node offline for up to half a day still finds valid orders retained.
DESIRED_VALIDITY_S = 24 * 3600.0
#: Shortest validity the book accepts: agents allow minutes of clock skew around it.
_MIN_VALIDITY_S = 60.0


class DesiredStateBook:
    """The desired model per node and pipeline, signed, persisted, published retained on change.

    ``publish(topic, payload)`` must deliver retained at QoS 1 (it raises if it cannot);
    the new state is stored only once it was published.

    Args:
        path: the SQLite file (shared with the controller's records).
        tenant: whose nodes these are.
        publish: see above.
        signer: the tenant's signer (``cloud_head.signer``): signs every desired state.
        private_key_pem: instead of ``signer``, the release key itself (tests, tools): a
            local ``TenantSigner`` is made of it.
        validity_s: how long each published desired state is valid (``expires_at``).
        clock: the time (Unix seconds) stamped as ``issued_at``.

    Raises:
        ArtifactError: ``private_key_pem`` is not an Ed25519 private key.
        ConfigError: not exactly one of ``signer`` and ``private_key_pem``, or
            ``validity_s`` is below a minute.
    """

    def __init__(
        self,
        path: Path,
        tenant: str,
        publish: Callable[[str, bytes], None],
        *,
        signer: ReleaseSigner | None = None,
        private_key_pem: bytes | None = None,
        validity_s: float = DESIRED_VALIDITY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = release_signer(tenant, signer, private_key_pem)
        if not validity_s >= _MIN_VALIDITY_S:
            raise ConfigError(
                f"desired-state validity_s is {validity_s}; use at least {_MIN_VALIDITY_S:.0f} s "
                f"(default {DESIRED_VALIDITY_S:.0f}): agents refuse expired orders"
            )
        self.path = Path(path)
        self.tenant = tenant
        self.validity_s = validity_s
        self._publish = publish
        self._clock = clock
        self._lock = threading.Lock()
        self._db = connect_state_file(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS desired (tenant TEXT, node TEXT, generation INTEGER, "
            "pipelines TEXT, PRIMARY KEY (tenant, node))"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(desired)")}
        if "document" not in columns:  # a book from before desired states were signed
            self._db.execute("ALTER TABLE desired ADD COLUMN document TEXT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get(self, node: str) -> DesiredState | None:
        """Return the node's desired state as last published (signed), if any was ever set."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines, document FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
        if row is None:
            return None
        if row[2] is not None:
            return DesiredState.model_validate_json(row[2])
        # Written before desired states were signed: nothing signed to return yet (the
        # controller's next tick re-issues it, ``refresh_expiring``), so sign it as of now.
        issued_at = self._clock()
        return signed_desired_state(
            self._signer,
            tenant=self.tenant,
            node=node,
            pipelines={k: DesiredModel(**v) for k, v in json.loads(row[1]).items()},
            generation=int(row[0]),
            issued_at=issued_at,
            validity_s=self.validity_s,
        )

    def assign(self, node: str, pipeline: str, model: DesiredModel) -> DesiredState:
        """Set what ``node`` should serve for ``pipeline`` and publish its whole desired state.

        The entry is marked ``rollback`` when its version is older than the one the book
        told the node before for that pipeline (a rollout's rollback, an operator's
        rollback or promotion of an older version): the agent refuses such a downgrade
        otherwise.  Going forward clears the mark.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
            previous = 0 if row is None else int(row[0])
            pipelines = {} if row is None else json.loads(row[1])
            before = pipelines.get(pipeline)
            rollback = model.rollback or (
                before is not None
                and (
                    version_order(model.version) < version_order(str(before["version"]))
                    # still the version rolled back to: keep the mark, or the order sent
                    # again would be a downgrade to a node that still serves the newer one
                    or (str(before["version"]) == model.version and bool(before.get("rollback")))
                )
            )
            entry = model.model_copy(update={"rollback": rollback})
            pipelines[pipeline] = entry.model_dump(mode="json")
            return self._publish_locked(node, pipelines, previous)

    def refresh_expiring(self) -> list[str]:
        """Re-issue (same orders, next generation) every desired state past half its validity.

        Call it periodically (the controller does on each tick): an agent refuses an
        expired desired state, so one that reconnects after a long while would otherwise
        find only orders it must refuse. Returns the nodes re-issued.
        """
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT node, generation, pipelines, document FROM desired WHERE tenant=?",
                (self.tenant,),
            ).fetchall()
            due: list[str] = []
            for node, generation, pipelines, document in rows:
                if document is not None:
                    state = DesiredState.model_validate_json(document)
                    if now < state.issued_at + (state.expires_at - state.issued_at) / 2:
                        continue
                self._publish_locked(str(node), json.loads(pipelines), int(generation))
                due.append(str(node))
        return due

    def serving_target(self, node: str, pipeline: str) -> str | None:
        """Return the version ``node`` is told to serve for ``pipeline``."""
        state = self.get(node)
        if state is None or pipeline not in state.pipelines:
            return None
        return state.pipelines[pipeline].version

    def _publish_locked(
        self, node: str, pipelines: dict[str, object], previous: int
    ) -> DesiredState:
        """Sign, publish and then store the node's desired state (the caller holds the lock).

        Its generation is above ``previous`` (the book's last for the node) and at least the
        issue time in microseconds: each pipeline's controller keeps a book of its own, and
        a book may be started afresh, yet an agent takes only a generation above the last
        it took, so generations must rise across all of them.
        """
        issued_at = self._clock()
        generation = max(previous + 1, int(issued_at * 1_000_000))
        state = signed_desired_state(
            self._signer,
            tenant=self.tenant,
            node=node,
            pipelines={k: DesiredModel.model_validate(v) for k, v in pipelines.items()},
            generation=generation,
            issued_at=issued_at,
            validity_s=self.validity_s,
        )
        payload = state.to_payload()
        self._publish(topics.node_desired(self.tenant, node), payload)
        self._db.execute(
            "INSERT INTO desired VALUES (?,?,?,?,?) ON CONFLICT(tenant, node) DO UPDATE SET "
            "generation=excluded.generation, pipelines=excluded.pipelines, "
            "document=excluded.document",
            (
                self.tenant,
                node,
                generation,
                json.dumps(pipelines, sort_keys=True),
                payload.decode(),
            ),
        )
        return state


def signed_desired_state(
    signer: ReleaseSigner | bytes,
    *,
    tenant: str,
    node: str,
    pipelines: Mapping[str, DesiredModel],
    generation: int,
    issued_at: float,
    validity_s: float = DESIRED_VALIDITY_S,
) -> DesiredState:
    """Return the desired state of ``node``, valid from ``issued_at`` for ``validity_s``,
    signed whole by the tenant's signer (``continuum.signing.desired_message``).

    The one place a desired state gets its signature: the book publishes what this
    returns, and agents verify it against the tenant's public key.  ``signer`` may be the
    release key itself (tests, tools): a local ``TenantSigner`` is made of it.
    """
    state = DesiredState(
        tenant=tenant,
        node=node,
        pipelines=dict(pipelines),
        issued_at=issued_at,
        expires_at=issued_at + validity_s,
        generation=generation,
    )
    if isinstance(signer, bytes):
        signer = release_signer(tenant, None, signer)
    signature = signer.sign_desired_state(state)
    return state.model_copy(update={"signature": signature})


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
