"""The model registry: every version of every pipeline's model, its artifact and its lineage.

A version is registered once, immutable afterwards except for its rollout status; the
artifact is copied into the registry's own directory under its digest so that what was
signed is what is served. The metadata goes to SQLite by default (WAL, one file) or to
PostgreSQL by URL, where several head processes share it (``cloud_head/_database.py``);
the schema is the same on both. On the local disk the database and the artifacts are
owner-only (files 0600, folders 0700), as is all of the cloud head's state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloud_head._database import Transaction, open_database, parse_url
from continuum._fs import OWNER_ONLY, atomic_write, private_dir, private_file
from continuum.errors import NotFoundError
from continuum.signing import sha256_bytes

ModelStatus = Literal["registered", "canary", "current", "retired", "rolled_back", "rejected"]

# One text for both dialects: SQLite reads BIGINT and DOUBLE PRECISION as its INTEGER and
# REAL (files made with those names before keep working); PostgreSQL needs them, since its
# INTEGER is 32-bit (artifact sizes) and its REAL single precision (timestamps).
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS model_versions (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    number INTEGER NOT NULL,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    parent TEXT,
    code_version TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    metrics TEXT NOT NULL,
    gate TEXT NOT NULL,
    lineage TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (tenant, pipeline, number)
)""",
    """
CREATE TABLE IF NOT EXISTS current_versions (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    version TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (tenant, pipeline)
)""",
)
_TABLES = ("model_versions", "current_versions")
#: Serialises schema creation: two heads starting at once must not both create the tables.
_SCHEMA_LOCK = "continuum/registry/schema"


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

    def classes(self) -> int | None:
        """How many classes the model outputs (its output's last axis); None if unknown.

        A label outside ``0 .. classes-1`` cannot train it: the review queue refuses one,
        and retraining leaves such labels out.
        """
        if not self.artifact_path.exists():
            return None
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                str(self.artifact_path), providers=["CPUExecutionProvider"]
            )
        except Exception:  # unreadable here: the caller then bounds nothing
            return None
        shape = session.get_outputs()[0].shape
        return shape[-1] if shape and isinstance(shape[-1], int) else None


class ModelRegistry:
    """Registry of model versions per tenant and pipeline: metadata in SQL, artifacts in files.

    ``url`` names the metadata's database: None for SQLite at ``root/registry.sqlite3``,
    ``sqlite:///ABSOLUTE/PATH`` for another SQLite file, ``postgresql://USER:PASSWORD@HOST:
    PORT/DATABASE`` for PostgreSQL, which several head processes can share (they number
    versions without collisions; the password may also come from libpq's ``PGPASSWORD`` or
    ``~/.pgpass``, keeping it out of the URL). Artifacts stay under ``root/artifacts`` in
    every case, and the database records their absolute paths: heads that share a
    PostgreSQL database must share ``root`` too, on a filesystem mounted at the same path
    on every one of them.

    Raises:
        ConfigError: a bad URL, or PostgreSQL without psycopg installed.
        NotReadyError: the PostgreSQL server cannot be reached (also from any method later,
            should it go away for longer than one reconnection).
    """

    def __init__(self, root: str | Path, url: str | None = None) -> None:
        self.root = Path(root)
        # Only SQLite's file and its folder are made here (owner-only, before SQLite makes
        # them with its own modes); registering makes the artifacts' one, and a command
        # reading a PostgreSQL registry leaves a mistyped --root uncreated.
        sqlite_file = self.root / "registry.sqlite3" if url is None else parse_url(url).sqlite_path
        if sqlite_file is not None:
            private_file(private_dir(sqlite_file.parent) / sqlite_file.name)
        self._db = open_database(url, self.root / "registry.sqlite3")
        try:
            # Checked first: creating, even "IF NOT EXISTS", needs the CREATE privilege on
            # the schema, which a least-privilege role for an existing registry lacks.
            if not all(self._db.has_table(table) for table in _TABLES):
                self._db.write(_SCHEMA_LOCK, _create_schema)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        self._db.close()

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
        is recorded if copying or signing fails, and the copy is the bytes that were hashed.
        The number is the pipeline's highest plus one, read and written under the pipeline's
        lock, so concurrent registrations (other threads, other head processes on the same
        database) get consecutive numbers.
        """
        if not artifact.is_file():
            raise NotFoundError(f"artifact {artifact} does not exist; train or export it first")
        # Read once: the bytes hashed (and signed) are the bytes written, even if the file
        # changes meanwhile.
        data = artifact.read_bytes()
        digest = sha256_bytes(data)

        def record(tx: Transaction) -> str:
            rows = tx.execute(
                "SELECT COALESCE(MAX(number), 0) FROM model_versions WHERE tenant=? AND pipeline=?",
                (tenant, pipeline),
            )
            number = int(rows[0][0]) + 1
            version = f"v{number}"
            target = self.root / "artifacts" / tenant / pipeline / f"{version}-{digest[:12]}.onnx"
            private_dir(target.parent)
            atomic_write(target, data, mode=OWNER_ONLY)
            signature = str(sign(model, version, digest))
            tx.execute(
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
            return version

        version = self._db.write(_pipeline_lock(tenant, pipeline), record)
        return self.get(tenant, pipeline, version)

    def get(self, tenant: str, pipeline: str, version: str) -> ModelVersion:
        """Return one version, or raise NotFoundError naming what exists."""
        rows = self._db.query(
            "SELECT * FROM model_versions WHERE tenant=? AND pipeline=? AND version=?",
            (tenant, pipeline, version),
        )
        if not rows:
            known = ", ".join(v.version for v in self.list(tenant, pipeline)) or "none"
            raise NotFoundError(
                f"no model version {version!r} for pipeline {pipeline!r} of tenant {tenant!r} "
                f"(registered: {known})"
            )
        return _row_to_version(rows[0])

    def list(self, tenant: str, pipeline: str | None = None) -> list[ModelVersion]:
        """Return the versions of a tenant (optionally one pipeline), oldest first."""
        query = "SELECT * FROM model_versions WHERE tenant=?"
        args: tuple[str, ...] = (tenant,)
        if pipeline is not None:
            query += " AND pipeline=?"
            args = (tenant, pipeline)
        rows = self._db.query(query, args)
        # Sorted here, not by ORDER BY: PostgreSQL would order names by the database's
        # collation, SQLite by code point; this is the same order on both.
        return [_row_to_version(r) for r in sorted(rows, key=lambda r: (r[1], r[2]))]

    def current(self, tenant: str, pipeline: str) -> ModelVersion | None:
        """Return the version every node of the pipeline should serve, if any was promoted."""
        rows = self._db.query(
            "SELECT version FROM current_versions WHERE tenant=? AND pipeline=?",
            (tenant, pipeline),
        )
        return None if not rows else self.get(tenant, pipeline, rows[0][0])

    def set_current(self, tenant: str, pipeline: str, version: str, reason: str) -> ModelVersion:
        """Make ``version`` the pipeline's current model; the previous one is retired.

        Under the pipeline's lock: two heads promoting at once leave one current version.
        """
        chosen = self.get(tenant, pipeline, version)

        def promote(tx: Transaction) -> None:
            tx.execute(
                "UPDATE model_versions SET status='retired' "
                "WHERE tenant=? AND pipeline=? AND status='current'",
                (tenant, pipeline),
            )
            tx.execute(
                "UPDATE model_versions SET status='current' "
                "WHERE tenant=? AND pipeline=? AND version=?",
                (tenant, pipeline, version),
            )
            tx.execute(
                "INSERT INTO current_versions VALUES (?,?,?,?,?) "
                "ON CONFLICT(tenant, pipeline) DO UPDATE SET version=excluded.version, "
                "changed_at=excluded.changed_at, reason=excluded.reason",
                (tenant, pipeline, version, time.time(), reason),
            )

        self._db.write(_pipeline_lock(tenant, pipeline), promote)
        return chosen

    def set_status(self, tenant: str, pipeline: str, version: str, status: ModelStatus) -> None:
        """Record a rollout status change of one version."""
        self.get(tenant, pipeline, version)
        self._db.write(
            _pipeline_lock(tenant, pipeline),
            lambda tx: tx.execute(
                "UPDATE model_versions SET status=? WHERE tenant=? AND pipeline=? AND version=?",
                (status, tenant, pipeline, version),
            ),
        )


def _create_schema(tx: Transaction) -> None:
    for statement in _SCHEMA:
        tx.execute(statement)


def _pipeline_lock(tenant: str, pipeline: str) -> str:
    """The lock key of one pipeline's versions (numbering, current version, statuses)."""
    return f"continuum/registry/{tenant}/{pipeline}"


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
