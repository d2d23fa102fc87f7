"""The model registry: every version of every pipeline's model, its artifact and its lineage.

A version is registered once, immutable afterwards except for its rollout status; the
artifact is copied into the registry's own directory under its digest so that what was
signed is what is served. SQLite by default (WAL, one file); the schema is plain SQL so the
same tables run on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from continuum.errors import NotFoundError, SpecError
from continuum.signing import sha256_file

ModelStatus = Literal["registered", "canary", "current", "retired", "rolled_back", "rejected"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    number INTEGER NOT NULL,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    parent TEXT,
    code_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    metrics TEXT NOT NULL,
    gate TEXT NOT NULL,
    lineage TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (tenant, pipeline, number)
);
CREATE TABLE IF NOT EXISTS current_versions (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    version TEXT NOT NULL,
    changed_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (tenant, pipeline)
);
"""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version with its lineage."""

    tenant: str
    pipeline: str
    version: str
    model: str
    sha256: str
    signature: str
    artifact_path: Path
    size_bytes: int
    parent: str | None
    code_version: str
    created_at: float
    status: ModelStatus
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The version's sequence number within its pipeline ("v3" -> 3)."""
        return int(self.version.removeprefix("v"))


class ModelRegistry:
    """SQLite-backed registry of model versions per tenant and pipeline."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.root / "registry.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def register(
        self,
        tenant: str,
        pipeline: str,
        model: str,
        artifact: Path,
        *,
        sign: Any,
        parent: str | None,
        code_version: str,
        metrics: Mapping[str, Any],
        gate: Mapping[str, Any],
        lineage: Mapping[str, Any],
        status: ModelStatus = "registered",
    ) -> ModelVersion:
        """Copy ``artifact`` into the registry, sign it and record a new version.

        ``sign(model, version, sha256) -> signature_hex`` is called with the version number
        this registration gets, so the signature binds the artifact to its version. Nothing
        is recorded if copying or signing fails.
        """
        if not artifact.is_file():
            raise NotFoundError(f"artifact {artifact} does not exist; train or export it first")
        digest = sha256_file(artifact)
        with self._transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(number), 0) FROM model_versions WHERE tenant=? AND pipeline=?",
                (tenant, pipeline),
            ).fetchone()
            number = int(row[0]) + 1
            version = f"v{number}"
            target = self.root / "artifacts" / tenant / pipeline / f"{version}-{digest[:12]}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            shutil.copyfile(artifact, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if sha256_file(tmp) != digest:
                tmp.unlink(missing_ok=True)
                raise SpecError(f"artifact {artifact} changed while it was being registered")
            os.replace(tmp, target)
            signature = str(sign(model, version, digest))
            db.execute(
                "INSERT INTO model_versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    tenant,
                    pipeline,
                    number,
                    version,
                    model,
                    digest,
                    signature,
                    str(target),
                    target.stat().st_size,
                    parent,
                    code_version,
                    time.time(),
                    json.dumps(dict(metrics), sort_keys=True),
                    json.dumps(dict(gate), sort_keys=True),
                    json.dumps(dict(lineage), sort_keys=True),
                    status,
                ),
            )
        return self.get(tenant, pipeline, version)

    def get(self, tenant: str, pipeline: str, version: str) -> ModelVersion:
        """Return one version, or raise NotFoundError naming what exists."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM model_versions WHERE tenant=? AND pipeline=? AND version=?",
                (tenant, pipeline, version),
            ).fetchone()
        if row is None:
            known = ", ".join(v.version for v in self.list(tenant, pipeline)) or "none"
            raise NotFoundError(
                f"no model version {version!r} for pipeline {pipeline!r} of tenant {tenant!r} "
                f"(registered: {known})"
            )
        return _row_to_version(row)

    def list(self, tenant: str, pipeline: str | None = None) -> list[ModelVersion]:
        """Return the versions of a tenant (optionally one pipeline), oldest first."""
        query = "SELECT * FROM model_versions WHERE tenant=?"
        args: tuple[str, ...] = (tenant,)
        if pipeline is not None:
            query += " AND pipeline=?"
            args = (tenant, pipeline)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY pipeline, number", args).fetchall()
        return [_row_to_version(r) for r in rows]

    def current(self, tenant: str, pipeline: str) -> ModelVersion | None:
        """Return the version every node of the pipeline should serve, if any was promoted."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM current_versions WHERE tenant=? AND pipeline=?",
                (tenant, pipeline),
            ).fetchone()
        return None if row is None else self.get(tenant, pipeline, row[0])

    def set_current(self, tenant: str, pipeline: str, version: str, reason: str) -> ModelVersion:
        """Make ``version`` the pipeline's current model; the previous one is retired."""
        chosen = self.get(tenant, pipeline, version)
        with self._transaction() as db:
            db.execute(
                "UPDATE model_versions SET status='retired' "
                "WHERE tenant=? AND pipeline=? AND status='current'",
                (tenant, pipeline),
            )
            db.execute(
                "UPDATE model_versions SET status='current' "
                "WHERE tenant=? AND pipeline=? AND version=?",
                (tenant, pipeline, version),
            )
            db.execute(
                "INSERT INTO current_versions VALUES (?,?,?,?,?) "
                "ON CONFLICT(tenant, pipeline) DO UPDATE SET version=excluded.version, "
                "changed_at=excluded.changed_at, reason=excluded.reason",
                (tenant, pipeline, version, time.time(), reason),
            )
        return chosen

    def set_status(self, tenant: str, pipeline: str, version: str, status: ModelStatus) -> None:
        """Record a rollout status change of one version."""
        self.get(tenant, pipeline, version)
        with self._transaction() as db:
            db.execute(
                "UPDATE model_versions SET status=? WHERE tenant=? AND pipeline=? AND version=?",
                (status, tenant, pipeline, version),
            )


def _row_to_version(row: tuple[Any, ...]) -> ModelVersion:
    (
        tenant,
        pipeline,
        _number,
        version,
        model,
        sha256,
        signature,
        artifact_path,
        size_bytes,
        parent,
        code_version,
        created_at,
        metrics,
        gate,
        lineage,
        status,
    ) = row
    return ModelVersion(
        tenant=tenant,
        pipeline=pipeline,
        version=version,
        model=model,
        sha256=sha256,
        signature=signature,
        artifact_path=Path(artifact_path),
        size_bytes=int(size_bytes),
        parent=parent,
        code_version=code_version,
        created_at=float(created_at),
        status=status,
        metrics=json.loads(metrics),
        gate=json.loads(gate),
        lineage=json.loads(lineage),
    )
