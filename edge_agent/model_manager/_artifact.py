"""From chunks to a model that may serve: assembled, checked (size, sha256, signature),
moved into ``models/`` atomically, opened with the pipeline's backend and probed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from continuum import signing
from continuum._fs import fsync_dir
from continuum.backends import InferenceBackend
from continuum.errors import ArtifactError, ContinuumError, InputMismatchError
from continuum.spec import PipelineSpec
from edge_agent.model_manager._fetch import Fetch, FetchFailedError
from edge_agent.model_manager._serving import BackendOpener


class ModelLoader:
    """Verify artifacts against the tenant's key, and open and probe models.

    Args:
        public_key_pem: the tenant's Ed25519 public key; only models it signed are run.
        opener: ``open_backend`` or a stand-in with its signature.
        engines_dir: the backends' engine caches.
        inference_threads: ONNX Runtime threads per inference of every model loaded.
        inference_replicas: ONNX Runtime sessions per model (one per batch in flight).
    """

    def __init__(
        self,
        *,
        public_key_pem: bytes,
        opener: BackendOpener,
        engines_dir: Path,
        inference_threads: int,
        inference_replicas: int,
    ) -> None:
        self._public_key = public_key_pem
        self._open = opener
        self._engines_dir = engines_dir
        self._threads = inference_threads
        self._replicas = inference_replicas

    def verify_signature(self, model: str, version: str, sha256: str, signature: str) -> None:
        """Raise ``ArtifactError`` unless the tenant signed (model, version, sha256)."""
        signing.verify_artifact(self._public_key, model, version, sha256, signature)

    def assemble(self, fetch: Fetch, folder: Path) -> Path:
        """Join ``fetch``'s chunks, check them, and move the artifact into ``folder``.

        Returns:
            ``folder/<version>.onnx``, durably in place.

        Raises:
            FetchFailedError: a disk error, a size or digest mismatch (the chunks are thrown
                away), or a bad signature.
        """
        want = fetch.want
        part = fetch.folder / "artifact.part"
        try:
            with open(part, "wb") as out:
                for index in range(want.chunks):
                    out.write(fetch.chunk_path(index).read_bytes())
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise FetchFailedError(
                "disk_error", f"cannot assemble: {exc}", state="failed", retry=True
            ) from exc
        size = part.stat().st_size
        if size != want.size_bytes:
            fetch.discard_chunks()
            raise FetchFailedError(
                "size_mismatch", f"assembled {size} bytes, expected {want.size_bytes}", retry=True
            )
        sha = signing.sha256_file(part)
        if sha != want.sha256:
            # Tampered or corrupt chunks: throw them away so a later attempt starts clean.
            fetch.discard_chunks()
            raise FetchFailedError(
                "digest_mismatch",
                f"artifact sha256 is {sha}, the signed desired state says {want.sha256}",
                retry=True,
            )
        try:
            self.verify_signature(want.model, want.version, sha, want.signature)
        except ArtifactError as exc:
            raise FetchFailedError("bad_signature", str(exc), retry=False) from exc
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{want.version}.onnx"
        os.replace(part, target)
        fsync_dir(folder)
        return target

    def load(self, spec: PipelineSpec, path: Path) -> InferenceBackend:
        """Open ``path`` with the pipeline's backend and run the probe batches through it.

        Raises:
            ArtifactError: the model does not load, does not fit the pipeline's input, or
                answers a probe with outputs that break the task's contract (shape, range,
                NaN).
        """
        backend = self._open(
            spec.edge.backend,
            path,
            max_batch=spec.edge.max_batch,
            engine_cache_dir=self._engines_dir,
            intra_op_threads=self._threads,
            replicas=self._replicas,
            plan_batches=True,
        )
        try:
            _probe(backend, spec)
        except ArtifactError:
            backend.close()
            raise
        except ContinuumError as exc:
            backend.close()
            raise ArtifactError(
                f"model does not fit the pipeline's input {spec.edge.input.shape} "
                f"{spec.edge.input.dtype}: {exc}"
            ) from exc
        return backend


def _probe(backend: InferenceBackend, spec: PipelineSpec) -> None:
    """Run the probe frames alone (and together, as the runtime's micro-batches)."""
    frames = probe_frames(spec)
    batches = [[frame] for frame in frames]
    if spec.edge.max_batch >= 2:
        batches.append(frames)  # as the runtime runs micro-batches
    for batch in batches:
        out = np.asarray(backend.infer_frames(batch))
        try:
            read = spec.edge.task.read(out)
        except InputMismatchError as exc:
            raise ArtifactError(
                f"model output of shape {out.shape} for {len(batch)} input(s) breaks the "
                f"pipeline's task {spec.edge.task.describe()}: {exc}; every frame it served "
                "would be rejected"
            ) from exc
        if read.rows != len(batch):
            raise ArtifactError(
                f"model output has shape {out.shape} for {len(batch)} input(s); the edge "
                "stage needs one row per input"
            )


def probe_frames(spec: PipelineSpec) -> list[np.ndarray]:
    """Two frames a new model must answer within its task's contract, alone and together: all
    zeros, and seeded noise over the input's usual range (0..1, or 0..255 for integer
    pixels), as a model may be finite on zeros alone."""
    shape, dtype = tuple(spec.edge.input.shape), spec.edge.input.numpy_dtype()
    rng = np.random.default_rng(0)
    noise = (
        rng.integers(0, 256, size=shape).astype(dtype)
        if np.issubdtype(dtype, np.integer)
        else rng.random(shape).astype(dtype)
    )
    return [np.zeros(shape, dtype=dtype), noise]
