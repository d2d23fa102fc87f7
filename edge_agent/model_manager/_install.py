"""Installing a model: a finished fetch (or a version kept on disk, or the saved pointer at
start) becomes a loaded, probed model handed to the runtime, recorded and reported."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from continuum import signing
from continuum.errors import ArtifactError, ContinuumError
from continuum.wire.messages import DesiredModel, ReportedModel
from edge_agent.model_manager._core import ManagerCore
from edge_agent.model_manager._fetch import Fetch, FetchFailedError
from edge_agent.model_manager._pointer import SavedModel, read_pointer, save_pointer
from edge_agent.model_manager._serving import ServingModel

log = logging.getLogger(__name__)


class Installer(ManagerCore):
    """The installing part of ``ModelManager`` (see there)."""

    def restore(self) -> dict[str, ServingModel]:
        """Load each pipeline's last verified model from disk (re-verified); return them.

        Call before ``start``.  A pipeline whose saved model no longer verifies starts
        without a model and waits for desired state.
        """
        restored: dict[str, ServingModel] = {}
        for name in self._specs:
            try:
                model = self._restore_one(name)
            except (OSError, ValueError, KeyError, TypeError, ContinuumError) as exc:
                log.warning("pipeline %s: saved model not restored: %s", name, exc)
                continue
            if model is None:
                continue
            restored[name] = model
            with self._lock:
                self._serving[name] = model
                self._reported[name] = ReportedModel(
                    model=model.model, version=model.version, sha256=model.sha256, state="serving"
                )
            log.info("pipeline %s: serving saved model %s %s", name, model.model, model.version)
        return restored

    def _restore_one(self, name: str) -> ServingModel | None:
        """Load the model ``name``'s pointer names, if it still verifies; None without one."""
        folder = self._models_dir / name
        saved = read_pointer(folder)
        if saved is None:
            return None
        path = folder / saved.file
        sha = signing.sha256_file(path)
        if sha != saved.sha256:
            raise ArtifactError(f"{path} changed on disk (sha256 {sha})")
        self._loader.verify_signature(saved.model, saved.version, sha, saved.signature)
        backend = self._loader.load(self._specs[name], path)
        return ServingModel(name, saved.model, saved.version, sha, saved.signature, path, backend)

    def _finish(self, fetch: Fetch) -> None:
        """Install the complete transfer ``fetch`` and serve it, or report why not."""
        try:
            target = self._loader.assemble(fetch, self._models_dir / fetch.pipeline)
            model = self._activate(fetch.pipeline, fetch.want, target, remove_on_failure=True)
        except FetchFailedError as exc:
            self._end_fetch(fetch, exc)
            return
        self._end_fetch(fetch, None)
        self._serve(model)

    def _serve(self, model: ServingModel) -> None:
        """Hand ``model`` to the runtime, report it and prune old versions."""
        self._retries.forget(model.pipeline)
        with self._lock:
            old = self._serving.get(model.pipeline)
            self._serving[model.pipeline] = model
        log.info(
            "pipeline %s: model %s %s verified and loaded (was %s)",
            model.pipeline,
            model.model,
            model.version,
            old.version if old else "none",
        )
        self._on_model(model)
        self._set_reported(
            model.pipeline,
            ReportedModel(
                model=model.model, version=model.version, sha256=model.sha256, state="serving"
            ),
        )
        self._prune(model.pipeline, keep=model.path)

    def _serve_kept(self, name: str, want: DesiredModel) -> bool:
        """Serve ``want`` from a version kept on disk (a rollback); return whether it did."""
        kept = self._models_dir / name / f"{want.version}.onnx"
        if not kept.is_file():
            return False
        try:
            if signing.sha256_file(kept) != want.sha256:
                return False
        except ArtifactError:
            return False
        try:
            model = self._activate(name, want, kept, remove_on_failure=False)
        except FetchFailedError as exc:
            self._refused[(want.model, want.version, want.sha256, want.signature)] = exc.reason
            self._rejected(name, want, exc.reason, str(exc), exc.state)
            return True
        log.info("pipeline %s: %s %s was kept on disk; no download", name, want.model, want.version)
        self._serve(model)
        return True

    def _activate(
        self, pipeline: str, want: DesiredModel, path: Path, *, remove_on_failure: bool
    ) -> ServingModel:
        """Load a verified artifact, probe it, and record it as the pipeline's current model."""
        try:
            backend = self._loader.load(self._specs[pipeline], path)
        except ContinuumError as exc:
            if remove_on_failure:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise FetchFailedError("load_failed", str(exc), retry=False) from exc
        save_pointer(
            path.parent,
            SavedModel(
                model=want.model,
                version=want.version,
                sha256=want.sha256,
                signature=want.signature,
                file=path.name,
            ),
        )
        return ServingModel(
            pipeline, want.model, want.version, want.sha256, want.signature, path, backend
        )

    def _prune(self, pipeline: str, keep: Path) -> None:
        """Keep the newest ``keep_versions`` artifacts of ``pipeline`` (always ``keep``)."""
        folder = self._models_dir / pipeline
        files = sorted(
            (p for p in folder.glob("*.onnx") if p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in files[max(0, self._keep_versions - 1) :]:
            with contextlib.suppress(OSError):
                old.unlink()
                log.info("pipeline %s: removed old model file %s", pipeline, old.name)
