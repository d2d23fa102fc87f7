"""Which model each pipeline serves: desired state in, verified artifacts to the runtime.

The manager follows the node's retained desired state.  For a pipeline whose desired
version differs from the serving one it checks the signature, fetches the artifact's
retained chunks (resumable: chunks already on disk are kept across reconnects and
restarts), checks size and sha256, moves the file atomically into
``models/<pipeline>/<version>.onnx``, loads it and runs one probe batch, and only then
hands it to the runtime, which swaps between batches.  Anything that fails is reported
as rejected (or failed) with the reason and the old model keeps serving: a wrong digest or
signature, a model that does not load, and a truncated transfer (the broker's retained
copy of a chunk has the wrong size, or chunks stay missing after the manifest arrived and
the broker was asked again).  Malformed or unexpected messages are counted by reason and
dropped; nothing received can stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from continuum import signing
from continuum.backends import InferenceBackend, open_backend
from continuum.errors import ArtifactError, ContinuumError, ProtocolError
from continuum.spec import PipelineSpec
from continuum.wire import topics
from continuum.wire.messages import (
    SCHEMA_VERSION,
    ArtifactManifest,
    DesiredModel,
    DesiredState,
    ReportedModel,
    ReportedState,
)

__all__ = ["ModelManager", "ServingModel", "Subscriber"]

log = logging.getLogger(__name__)

#: Bound on undecoded messages waiting for the worker (chunks are up to 16 MiB each).
_INBOX_MAX_BYTES = 64 * 1024 * 1024
#: A fetch that got nothing new for this long asks the broker for its missing chunks again.
_STALL_S = 10.0
#: Stalls in a row (while connected, after the manifest arrived) that make a fetch truncated.
_STALL_LIMIT = 3
_TICK_S = 0.5
#: A fetch that failed in a way a new attempt can mend (a tampered or truncated transfer, a
#: disk error) is tried again after this long, doubling up to ``_RETRY_MAX_S``, while the
#: desired state still names it: the broker's retained chunks are intact even when a live
#: copy was not.
_RETRY_MIN_S = 30.0
_RETRY_MAX_S = 900.0

BackendOpener = Callable[..., InferenceBackend]


class Subscriber(Protocol):
    """What the manager needs from the MQTT link."""

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Keep these topics subscribed (across reconnects)."""
        ...

    def unsubscribe(self, topics: Iterable[str]) -> None:
        """Stop receiving these topics."""
        ...

    def resubscribe(self, topics: Iterable[str]) -> None:
        """Subscribe again so the broker resends their retained messages."""
        ...


@dataclass(frozen=True, slots=True)
class ServingModel:
    """A verified, loaded model ready for the runtime to swap in."""

    pipeline: str
    model: str
    version: str
    sha256: str
    signature: str
    path: Path
    backend: InferenceBackend = field(compare=False, repr=False)


@dataclass
class _Fetch:
    """One artifact being assembled for one pipeline."""

    pipeline: str
    want: DesiredModel
    generation: int
    folder: Path
    received: set[int]
    last_progress: float
    #: Whether the manifest arrived: the upload is complete on the broker (it comes last).
    manifest_seen: bool = False
    #: Stall periods in a row, counted only while connected and after the manifest.
    stalls: int = 0

    def chunk_topics(self, tenant: str, indices: Iterable[int]) -> list[str]:
        return [
            topics.artifact_chunk(tenant, self.want.model, self.want.version, i) for i in indices
        ]

    def missing(self) -> list[int]:
        return [i for i in range(self.want.chunks) if i not in self.received]

    def expected_size(self, index: int) -> int:
        if index < self.want.chunks - 1:
            return self.want.chunk_size
        return self.want.size_bytes - self.want.chunk_size * (self.want.chunks - 1)


@dataclass
class _Retry:
    """A desired model whose fetch failed, to be fetched again at ``due`` (monotonic)."""

    want: DesiredModel
    generation: int
    due: float
    delay_s: float


class _RejectedError(Exception):
    """A fetch ended without a model; ``state`` is "rejected" or "failed"."""

    def __init__(self, reason: str, detail: str, *, state: str = "rejected", retry: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.state = state
        self.retry = retry


class ModelManager:
    """Follow desired state: fetch, verify, load and hand over models; report the outcome.

    Args:
        node, tenant: this node.
        state_dir: holds ``models/`` (verified artifacts), ``downloads/`` (partial ones) and
            ``engines/`` (backend caches).
        public_key_pem: the tenant's Ed25519 public key; only models it signed are run.
        pipelines: the specs of the pipelines served here, by name.
        link: subscriptions (the MQTT link).
        on_model: receives each verified, loaded model (call it from the worker thread).
        on_report: receives the reported state after every change.
        on_reject: called with (pipeline, reason) when a model version is rejected.
        on_message_rejected: called with a reason for every dropped incoming message.
        keep_versions: verified versions kept on disk per pipeline.
        inference_threads: ONNX Runtime threads per inference of every model loaded.
        inference_replicas: ONNX Runtime sessions per model (one per batch in flight).
        backend_opener: ``open_backend`` or a stand-in with its signature.
        is_connected: whether the link is up; a fetch only counts as stalled while it is.
        stall_s: a fetch without progress for this long asks the broker again for what
            is missing; after ``stall_limit`` such periods in a row with the manifest
            present it is rejected as a truncated transfer.
        stall_limit: see ``stall_s``.
        retry_s: a fetch that failed in a way another attempt can mend (tampered or
            truncated chunks, a disk error) is tried again this long after, then after
            twice as long each time (up to 15 minutes), while the desired state names it.
    """

    def __init__(
        self,
        *,
        node: str,
        tenant: str,
        state_dir: Path,
        public_key_pem: bytes,
        pipelines: Mapping[str, PipelineSpec],
        link: Subscriber,
        on_model: Callable[[ServingModel], None],
        on_report: Callable[[ReportedState], None],
        on_reject: Callable[[str, str], None] | None = None,
        on_message_rejected: Callable[[str], None] | None = None,
        keep_versions: int = 3,
        inference_threads: int = 1,
        inference_replicas: int = 1,
        backend_opener: BackendOpener = open_backend,
        clock: Callable[[], float] = time.time,
        is_connected: Callable[[], bool] = lambda: True,
        stall_s: float = _STALL_S,
        stall_limit: int = _STALL_LIMIT,
        retry_s: float = _RETRY_MIN_S,
    ) -> None:
        signing.load_public_key(public_key_pem)  # fail at start, not at the first model
        if stall_s <= 0 or stall_limit < 1 or retry_s <= 0:
            raise ValueError(
                f"need stall_s > 0, stall_limit >= 1 and retry_s > 0, got {stall_s=} "
                f"{stall_limit=} {retry_s=}"
            )
        self.node = node
        self.tenant = tenant
        self.desired_topic = topics.node_desired(tenant, node)
        self._public_key = public_key_pem
        self._specs = dict(pipelines)
        self._link = link
        self._on_model = on_model
        self._on_report = on_report
        self._on_reject = on_reject
        self._on_message_rejected = on_message_rejected
        self._keep_versions = keep_versions
        self._inference_threads = inference_threads
        self._inference_replicas = inference_replicas
        self._open = backend_opener
        self._clock = clock
        self._is_connected = is_connected
        self._stall_s = stall_s
        self._stall_limit = stall_limit
        self._retry_s = retry_s
        self._models_dir = state_dir / "models"
        self._downloads_dir = state_dir / "downloads"
        self._engines_dir = state_dir / "engines"
        for folder in (self._models_dir, self._downloads_dir, self._engines_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._inbox_bytes = 0
        self._inbox_lock = threading.Lock()
        self._lock = threading.Lock()
        self._serving: dict[str, ServingModel] = {}
        self._reported: dict[str, ReportedModel] = {}
        self._fetches: dict[str, _Fetch] = {}
        self._retries: dict[str, _Retry] = {}  # pipeline -> its failed fetch's next attempt
        #: (model, version, sha256, signature) that failed for good; not fetched again.
        self._refused: dict[tuple[str, str, str, str], str] = {}
        self._generation = -1
        self._rejected_messages: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public surface --------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the desired state and start the worker thread."""
        self._link.subscribe([self.desired_topic])
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"ctm-models-{self.tenant}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker; partial downloads stay on disk for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def offer(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Queue an incoming message for the worker (called on the network thread).

        ``retained`` says the broker sent its stored copy (after a subscribe), not a live
        publish: a retained chunk of the wrong size means the artifact on the broker is
        truncated, while a live one may be a stray message and is only counted.
        """
        size = len(payload)
        with self._inbox_lock:
            if self._inbox_bytes + size > _INBOX_MAX_BYTES:
                full = True
            else:
                full = False
                self._inbox_bytes += size
        if full:
            # A dropped chunk is asked for again when its fetch stalls.
            self._reject_message("inbox_full", f"inbox full, dropped a message on {topic!r}")
            return
        self._inbox.put((topic, payload, retained))

    @property
    def rejected_messages(self) -> dict[str, int]:
        """Dropped incoming messages by reason."""
        with self._lock:
            return dict(self._rejected_messages)

    def serving(self) -> dict[str, ServingModel]:
        """Return the model each pipeline serves now."""
        with self._lock:
            return dict(self._serving)

    def reported_state(self) -> ReportedState:
        """Return the node's reported state as of now."""
        with self._lock:
            return ReportedState(
                schema_version=SCHEMA_VERSION,
                node=self.node,
                pipelines=dict(self._reported),
                ts=self._clock(),
            )

    def restore(self) -> dict[str, ServingModel]:
        """Load each pipeline's last verified model from disk (re-verified); return them.

        Call before ``start``.  A pipeline whose saved model no longer verifies starts
        without a model and waits for desired state.
        """
        restored: dict[str, ServingModel] = {}
        for name, spec in self._specs.items():
            pointer = self._models_dir / name / "current.json"
            if not pointer.is_file():
                continue
            try:
                saved = json.loads(pointer.read_text(encoding="utf-8"))
                path = self._models_dir / name / str(saved["file"])
                sha = signing.sha256_file(path)
                if sha != saved["sha256"]:
                    raise ArtifactError(f"{path} changed on disk (sha256 {sha})")
                signing.verify_artifact(
                    self._public_key, saved["model"], saved["version"], sha, saved["signature"]
                )
                backend = self._load(spec, path)
            except (OSError, ValueError, KeyError, TypeError, ContinuumError) as exc:
                log.warning("pipeline %s: saved model not restored: %s", name, exc)
                continue
            model = ServingModel(
                name, saved["model"], saved["version"], sha, saved["signature"], path, backend
            )
            restored[name] = model
            with self._lock:
                self._serving[name] = model
                self._reported[name] = ReportedModel(
                    model=model.model, version=model.version, sha256=sha, state="serving"
                )
            log.info("pipeline %s: serving saved model %s %s", name, model.model, model.version)
        return restored

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, retained = self._inbox.get(timeout=_TICK_S)
            except queue.Empty:
                self._tick()
                continue
            with self._inbox_lock:
                self._inbox_bytes -= len(payload)
            try:
                self._handle(topic, payload, retained)
            except Exception:  # a bug here must not stop model updates for good
                log.exception("handling a message on %r failed", topic)
                self._reject_message("internal_error", f"internal error on {topic!r}")
            self._tick()

    def _handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if topic == self.desired_topic:
            self._handle_desired(payload)
            return
        try:
            parsed = topics.parse(topic)
        except ProtocolError:
            self._reject_message("unexpected_topic", f"message on unexpected topic {topic!r}")
            return
        if parsed.kind != "artifact" or parsed.tenant != self.tenant:
            self._reject_message("unexpected_topic", f"message on unexpected topic {topic!r}")
            return
        if not payload:
            return  # a retained artifact being cleared; nothing to fetch
        fetches = [
            f
            for f in self._fetches.values()
            if f.want.model == parsed.model and f.want.version == parsed.version
        ]
        if not fetches:
            # Retained chunks of a fetch that just completed or was replaced.
            self._reject_message("unexpected_artifact", f"no fetch waits for {topic!r}")
            return
        for fetch in fetches:
            if parsed.chunk >= 0:
                self._handle_chunk(fetch, parsed.chunk, payload, retained)
            else:
                self._handle_manifest(fetch, payload)

    def _handle_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the retained desired state was cleared: keep serving what we have
        try:
            desired = DesiredState.from_payload(payload)
        except ProtocolError as exc:
            self._reject_message(f"desired_{exc.reason}", f"malformed desired state: {exc}")
            return
        if desired.node != self.node:
            self._reject_message(
                "desired_wrong_node", f"desired state for node {desired.node!r} on our topic"
            )
            return
        if desired.generation < self._generation:
            self._reject_message(
                "desired_stale",
                f"desired generation {desired.generation} is older than {self._generation}",
            )
            return
        newer = desired.generation > self._generation
        self._generation = desired.generation
        for name, want in desired.pipelines.items():
            spec = self._specs.get(name)
            if spec is None:
                self._reject_message(
                    "desired_unknown_pipeline",
                    f"desired state names pipeline {name!r}, which this node does not serve",
                )
                continue
            if want.model != spec.edge.model:
                # A tenant-signed artifact of another model (another pipeline's, or one
                # never meant for the edge) is still the wrong model for this pipeline.
                self._reject_message(
                    "desired_wrong_model",
                    f"desired state names model {want.model!r} for pipeline {name!r}, whose "
                    f"spec runs {spec.edge.model!r}",
                )
                continue
            self._follow(name, want, desired.generation, newer)

    def _follow(self, name: str, want: DesiredModel, generation: int, newer: bool) -> None:
        retry = self._retries.get(name)
        if retry is not None and retry.want != want:
            del self._retries[name]  # the desired state moved on
        with self._lock:
            serving = self._serving.get(name)
            reported = self._reported.get(name)
        if serving is not None and (serving.model, serving.version, serving.sha256) == (
            want.model,
            want.version,
            want.sha256,
        ):
            self._retries.pop(name, None)
            self._cancel(name)
            return
        current = self._fetches.get(name)
        if current is not None and current.want == want:
            return
        key = (want.model, want.version, want.sha256, want.signature)
        if key in self._refused:
            return
        if (
            not newer
            and reported is not None
            and reported.state in ("rejected", "failed")
            and (reported.model, reported.version, reported.sha256)
            == (want.model, want.version, want.sha256)
        ):
            return  # the same desired state again (a redelivery): do not retry yet
        self._cancel(name)
        try:
            signing.verify_artifact(
                self._public_key, want.model, want.version, want.sha256, want.signature
            )
        except ArtifactError as exc:
            self._refused[key] = "bad_signature"
            self._rejected(name, want, "bad_signature", str(exc), "rejected")
            return
        # One folder per pipeline: two pipelines fetching the same artifact must not
        # delete each other's chunks when one of them finishes first.
        if self._serve_kept(name, want):
            return
        folder = self._downloads_dir / name / f"{want.model}-{want.version}-{want.sha256[:16]}"
        folder.mkdir(parents=True, exist_ok=True)
        fetch = _Fetch(name, want, generation, folder, set(), time.monotonic())
        for index in range(want.chunks):
            chunk = folder / f"{index:06d}.chunk"
            with contextlib.suppress(OSError):
                if chunk.stat().st_size == fetch.expected_size(index):
                    fetch.received.add(index)
        self._fetches[name] = fetch
        log.info(
            "pipeline %s: fetching %s %s (%d bytes, %d/%d chunks already here)",
            name,
            want.model,
            want.version,
            want.size_bytes,
            len(fetch.received),
            want.chunks,
        )
        manifest = topics.artifact_manifest(self.tenant, want.model, want.version)
        self._link.subscribe([manifest, *fetch.chunk_topics(self.tenant, fetch.missing())])
        # Reported after subscribing: the link sends packets in order, so by the time the
        # cloud reads "fetching" the broker already routes the artifact's topics to us.
        self._set_reported(
            name,
            ReportedModel(
                model=want.model, version=want.version, sha256=want.sha256, state="fetching"
            ),
        )
        if not fetch.missing():
            self._finish(fetch)

    def _handle_manifest(self, fetch: _Fetch, payload: bytes) -> None:
        try:
            manifest = ArtifactManifest.from_payload(payload)
        except ProtocolError as exc:
            self._reject_message(f"manifest_{exc.reason}", f"malformed manifest: {exc}")
            return
        want = fetch.want
        ours = (want.sha256, want.signature, want.size_bytes, want.chunk_size, want.chunks)
        theirs = (
            manifest.sha256,
            manifest.signature,
            manifest.size_bytes,
            manifest.chunk_size,
            manifest.chunks,
        )
        if ours != theirs:
            # The desired state is what the rollout signed off; a manifest that disagrees
            # is an older or foreign upload under the same version: wait for the right one.
            self._reject_message(
                "manifest_mismatch",
                f"manifest of {want.model} {want.version} does not match the desired state",
            )
            return
        fetch.manifest_seen = True

    def _handle_chunk(self, fetch: _Fetch, index: int, payload: bytes, retained: bool) -> None:
        if index >= fetch.want.chunks:
            self._reject_message("bad_chunk", f"chunk {index} of {fetch.want.chunks}")
            return
        if index in fetch.received:
            return
        if len(payload) != fetch.expected_size(index):
            detail = (
                f"chunk {index} of {fetch.want.model} {fetch.want.version} has "
                f"{len(payload)} bytes, expected {fetch.expected_size(index)}"
            )
            self._reject_message("bad_chunk", detail)
            if retained:
                # The broker's own copy is cut (or padded): asking again cannot fix it.
                self._end_fetch(
                    fetch,
                    _RejectedError(
                        "truncated_transfer", f"the broker's retained {detail}", retry=True
                    ),
                )
            return
        target = fetch.folder / f"{index:06d}.chunk"
        try:
            # No fsync per chunk: a chunk torn by a power cut fails the final sha256 check.
            _write_atomically(target, payload, fsync=False)
        except OSError as exc:
            self._end_fetch(
                fetch,
                _RejectedError(
                    "disk_error", f"cannot store chunk: {exc}", state="failed", retry=True
                ),
            )
            return
        fetch.received.add(index)
        fetch.last_progress = time.monotonic()
        fetch.stalls = 0
        self._release_topics(fetch.chunk_topics(self.tenant, [index]))
        if len(fetch.received) == fetch.want.chunks:
            self._finish(fetch)

    def _tick(self) -> None:
        now = time.monotonic()
        connected = self._is_connected()
        for name, retry in list(self._retries.items()):
            if connected and now >= retry.due and name not in self._fetches:
                retry.due = math.inf  # until this attempt ends (``_end_fetch``)
                log.info(
                    "pipeline %s: fetching %s %s again after a failed attempt",
                    name,
                    retry.want.model,
                    retry.want.version,
                )
                self._follow(name, retry.want, retry.generation, newer=True)
        for fetch in list(self._fetches.values()):
            if not connected:
                # Nothing can arrive while the link is down; an outage is not a truncation.
                fetch.last_progress = now
                fetch.stalls = 0
                continue
            if now - fetch.last_progress < self._stall_s:
                continue
            fetch.last_progress = now
            missing = fetch.missing()
            want = fetch.want
            if fetch.manifest_seen:
                fetch.stalls += 1
                if fetch.stalls >= self._stall_limit:
                    # The manifest is published after the last chunk, so the broker holds
                    # every chunk it will ever hold, and it was asked for them again.
                    self._end_fetch(
                        fetch,
                        _RejectedError(
                            "truncated_transfer",
                            f"{len(missing)} of {want.chunks} chunk(s) never arrived (first "
                            f"{missing[:5]}) although the manifest did and the broker was asked "
                            f"{fetch.stalls - 1} more time(s)",
                            retry=True,
                        ),
                    )
                    continue
            log.info(
                "pipeline %s: fetch of %s %s stalled with %d chunk(s) missing; asking again",
                fetch.pipeline,
                want.model,
                want.version,
                len(missing),
            )
            again = fetch.chunk_topics(self.tenant, missing)
            if not fetch.manifest_seen:
                again.append(topics.artifact_manifest(self.tenant, want.model, want.version))
            self._link.resubscribe(again)

    # -- finishing a fetch -----------------------------------------------------------------

    def _finish(self, fetch: _Fetch) -> None:
        try:
            model = self._install(fetch)
        except _RejectedError as exc:
            self._end_fetch(fetch, exc)
            return
        self._end_fetch(fetch, None)
        self._serve(model)

    def _serve(self, model: ServingModel) -> None:
        """Hand ``model`` to the runtime, report it and prune old versions."""
        self._retries.pop(model.pipeline, None)
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
        except _RejectedError as exc:
            self._refused[(want.model, want.version, want.sha256, want.signature)] = exc.reason
            self._rejected(name, want, exc.reason, str(exc), exc.state)
            return True
        log.info("pipeline %s: %s %s was kept on disk; no download", name, want.model, want.version)
        self._serve(model)
        return True

    def _install(self, fetch: _Fetch) -> ServingModel:
        want = fetch.want
        part = fetch.folder / "artifact.part"
        try:
            with open(part, "wb") as out:
                for index in range(want.chunks):
                    out.write((fetch.folder / f"{index:06d}.chunk").read_bytes())
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise _RejectedError(
                "disk_error", f"cannot assemble: {exc}", state="failed", retry=True
            ) from exc
        size = part.stat().st_size
        if size != want.size_bytes:
            self._discard_chunks(fetch)
            raise _RejectedError(
                "size_mismatch", f"assembled {size} bytes, expected {want.size_bytes}", retry=True
            )
        sha = signing.sha256_file(part)
        if sha != want.sha256:
            # Tampered or corrupt chunks: throw them away so a later attempt starts clean.
            self._discard_chunks(fetch)
            raise _RejectedError(
                "digest_mismatch",
                f"artifact sha256 is {sha}, the signed desired state says {want.sha256}",
                retry=True,
            )
        try:
            signing.verify_artifact(self._public_key, want.model, want.version, sha, want.signature)
        except ArtifactError as exc:
            raise _RejectedError("bad_signature", str(exc), retry=False) from exc
        folder = self._models_dir / fetch.pipeline
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{want.version}.onnx"
        os.replace(part, target)
        _fsync_dir(folder)
        return self._activate(fetch.pipeline, want, target, remove_on_failure=True)

    def _activate(
        self, pipeline: str, want: DesiredModel, path: Path, *, remove_on_failure: bool
    ) -> ServingModel:
        """Load a verified artifact, probe it, and record it as the pipeline's current model."""
        try:
            backend = self._load(self._specs[pipeline], path)
        except ContinuumError as exc:
            if remove_on_failure:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise _RejectedError("load_failed", str(exc), retry=False) from exc
        _write_atomically(
            path.parent / "current.json",
            json.dumps(
                {
                    "model": want.model,
                    "version": want.version,
                    "sha256": want.sha256,
                    "signature": want.signature,
                    "file": path.name,
                }
            ).encode(),
        )
        return ServingModel(
            pipeline, want.model, want.version, want.sha256, want.signature, path, backend
        )

    def _load(self, spec: PipelineSpec, path: Path) -> InferenceBackend:
        """Open ``path`` with the pipeline's backend and run one probe batch through it."""
        backend = self._open(
            spec.edge.backend,
            path,
            max_batch=spec.edge.max_batch,
            engine_cache_dir=self._engines_dir,
            intra_op_threads=self._inference_threads,
            replicas=self._inference_replicas,
            plan_batches=True,
        )
        try:
            frames = _probe_frames(spec)
            batches = [[frame] for frame in frames]
            if spec.edge.max_batch >= 2:
                batches.append(frames)  # as the runtime runs micro-batches
            for batch in batches:
                out = np.asarray(backend.infer_frames(batch))
                if out.ndim != 2 or out.shape[0] != len(batch) or out.shape[1] < 2:
                    raise ArtifactError(
                        f"model output has shape {out.shape} for {len(batch)} input(s); the "
                        "edge stage needs class probabilities of shape (batch, classes >= 2)"
                    )
                if not np.isfinite(out).all():
                    raise ArtifactError(
                        "model output holds NaN or infinite values for a probe input; every "
                        "frame it served would be rejected"
                    )
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

    def _end_fetch(self, fetch: _Fetch, error: _RejectedError | None) -> None:
        want = fetch.want
        if self._fetches.get(fetch.pipeline) is fetch:
            del self._fetches[fetch.pipeline]
        self._release_topics(
            [
                topics.artifact_manifest(self.tenant, want.model, want.version),
                *fetch.chunk_topics(self.tenant, range(want.chunks)),
            ]
        )
        if error is None:
            self._retries.pop(fetch.pipeline, None)
            shutil.rmtree(fetch.folder, ignore_errors=True)
            return
        if error.retry:
            last = self._retries.get(fetch.pipeline)
            delay = (
                min(_RETRY_MAX_S, last.delay_s * 2)
                if last is not None and last.want == want
                else self._retry_s
            )
            self._retries[fetch.pipeline] = _Retry(
                want, fetch.generation, time.monotonic() + delay, delay
            )
        else:
            self._retries.pop(fetch.pipeline, None)
            self._refused[(want.model, want.version, want.sha256, want.signature)] = error.reason
            shutil.rmtree(fetch.folder, ignore_errors=True)
        self._rejected(fetch.pipeline, want, error.reason, str(error), error.state)

    def _rejected(
        self, pipeline: str, want: DesiredModel, reason: str, detail: str, state: str
    ) -> None:
        with self._lock:
            serving = self._serving.get(pipeline)
        log.warning(
            "pipeline %s: model %s %s %s (%s): %s; still serving %s",
            pipeline,
            want.model,
            want.version,
            state,
            reason,
            detail,
            f"{serving.model} {serving.version}" if serving else "nothing",
        )
        self._set_reported(
            pipeline,
            ReportedModel(
                model=want.model,
                version=want.version,
                sha256=want.sha256,
                state="failed" if state == "failed" else "rejected",
                error=f"{reason}: {detail}"[:2000],
            ),
        )
        if self._on_reject is not None:
            self._on_reject(pipeline, reason)

    def _cancel(self, pipeline: str) -> None:
        fetch = self._fetches.pop(pipeline, None)
        if fetch is None:
            return
        want = fetch.want
        self._release_topics(
            [
                topics.artifact_manifest(self.tenant, want.model, want.version),
                *fetch.chunk_topics(self.tenant, fetch.missing()),
            ]
        )
        with self._lock:
            serving = self._serving.get(pipeline)
            if serving is not None:
                self._reported[pipeline] = ReportedModel(
                    model=serving.model,
                    version=serving.version,
                    sha256=serving.sha256,
                    state="serving",
                )
        self._publish_report()

    def _release_topics(self, names: list[str]) -> None:
        """Unsubscribe from ``names`` except those another active fetch still waits for."""
        needed: set[str] = set()
        for other in self._fetches.values():
            needed.add(topics.artifact_manifest(self.tenant, other.want.model, other.want.version))
            needed.update(other.chunk_topics(self.tenant, other.missing()))
        unused = [name for name in names if name not in needed]
        if unused:
            self._link.unsubscribe(unused)

    def _discard_chunks(self, fetch: _Fetch) -> None:
        shutil.rmtree(fetch.folder, ignore_errors=True)
        fetch.received.clear()

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

    # -- reporting -------------------------------------------------------------------------

    def _set_reported(self, pipeline: str, model: ReportedModel) -> None:
        with self._lock:
            self._reported[pipeline] = model
        self._publish_report()

    def _publish_report(self) -> None:
        try:
            self._on_report(self.reported_state())
        except Exception:
            log.exception("publishing the reported state failed")

    def _reject_message(self, reason: str, detail: str) -> None:
        with self._lock:
            self._rejected_messages[reason] += 1
            first = self._rejected_messages[reason] == 1
        # Log the first of each kind loudly; the counter (and metric) tells the rest.
        (log.warning if first else log.debug)("rejected a message (%s): %s", reason, detail)
        if self._on_message_rejected is not None:
            self._on_message_rejected(reason)


def _probe_frames(spec: PipelineSpec) -> list[np.ndarray]:
    """Two frames a new model must answer with finite class scores, alone and together: all
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


def _write_atomically(target: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``target`` so readers see the old file or the whole new one."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
