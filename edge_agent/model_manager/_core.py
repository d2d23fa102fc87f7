"""What every part of the model manager shares: its settings, the models it serves, the
fetches under way, the reported state, and the bookkeeping that ends or cancels a fetch."""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from continuum import signing
from continuum.backends import open_backend
from continuum.spec import PipelineSpec
from continuum.wire import topics
from continuum.wire.messages import SCHEMA_VERSION, DesiredModel, ReportedModel, ReportedState
from edge_agent.model_manager._artifact import ModelLoader
from edge_agent.model_manager._fetch import (
    RETRY_MIN_S,
    STALL_LIMIT,
    STALL_S,
    Fetch,
    FetchFailedError,
    RetrySchedule,
)
from edge_agent.model_manager._serving import BackendOpener, ServingModel, Subscriber
from edge_agent.model_manager._taken import load_taken

log = logging.getLogger(__name__)

#: How far this node's clock may be off the cloud's: a desired state issued up to this long
#: in the future, or expired up to this long ago, is still taken.
CLOCK_SKEW_S = 300.0


class ManagerCore:
    """The shared state of ``ModelManager`` (see there for the arguments)."""

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
        stall_s: float = STALL_S,
        stall_limit: int = STALL_LIMIT,
        retry_s: float = RETRY_MIN_S,
        clock_skew_s: float = CLOCK_SKEW_S,
    ) -> None:
        signing.load_public_key(public_key_pem)  # fail at start, not at the first model
        if stall_s <= 0 or stall_limit < 1 or retry_s <= 0 or clock_skew_s < 0:
            raise ValueError(
                f"need stall_s > 0, stall_limit >= 1, retry_s > 0 and clock_skew_s >= 0, got "
                f"{stall_s=} {stall_limit=} {retry_s=} {clock_skew_s=}"
            )
        self.node = node
        self.tenant = tenant
        self.desired_topic = topics.node_desired(tenant, node)
        self._specs = dict(pipelines)
        self._link = link
        self._on_model = on_model
        self._on_report = on_report
        self._on_reject = on_reject
        self._on_message_rejected = on_message_rejected
        self._keep_versions = keep_versions
        self._clock = clock
        self._clock_skew_s = clock_skew_s
        self._public_key = public_key_pem
        self._is_connected = is_connected
        self._stall_s = stall_s
        self._stall_limit = stall_limit
        self._models_dir = state_dir / "models"
        self._downloads_dir = state_dir / "downloads"
        engines_dir = state_dir / "engines"
        for folder in (self._models_dir, self._downloads_dir, engines_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._loader = ModelLoader(
            public_key_pem=public_key_pem,
            opener=backend_opener,
            engines_dir=engines_dir,
            inference_threads=inference_threads,
            inference_replicas=inference_replicas,
        )
        self._lock = threading.Lock()
        self._serving: dict[str, ServingModel] = {}
        self._reported: dict[str, ReportedModel] = {}
        self._fetches: dict[str, Fetch] = {}
        self._retries = RetrySchedule(retry_s)  # pipeline -> its failed fetch's next attempt
        #: (model, version, sha256, signature) that failed for good; not fetched again.
        self._refused: dict[tuple[str, str, str, str], str] = {}
        #: The generation and signature of the last desired state taken (-1: none yet),
        #: kept across restarts (``_taken``).
        self._state_dir = state_dir
        taken = load_taken(state_dir, public_key_pem, tenant, node)
        self._generation = -1 if taken is None else taken.generation
        self._applied_signature: str | None = None if taken is None else taken.signature
        self._rejected_messages: Counter[str] = Counter()
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._inbox_bytes = 0
        self._inbox_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the manager serves and reports -----------------------------------------------

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
        # The metric first: whoever sees the count in ``rejected_messages`` finds it there.
        if self._on_message_rejected is not None:
            self._on_message_rejected(reason)
        with self._lock:
            self._rejected_messages[reason] += 1
            first = self._rejected_messages[reason] == 1
        # Log the first of each kind loudly; the counter (and metric) tells the rest.
        (log.warning if first else log.debug)("rejected a message (%s): %s", reason, detail)

    def _rejected(
        self, pipeline: str, want: DesiredModel, reason: str, detail: str, state: str
    ) -> None:
        """Log and report that ``want`` was rejected (or failed); the old model serves on."""
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

    # -- ending a fetch ----------------------------------------------------------------------

    def _end_fetch(self, fetch: Fetch, error: FetchFailedError | None) -> None:
        """Forget ``fetch``; on ``error``, schedule a retry or refuse the model for good."""
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
            self._retries.forget(fetch.pipeline)
            shutil.rmtree(fetch.folder, ignore_errors=True)
            return
        if error.retry:
            self._retries.failed(fetch.pipeline, want, fetch.generation)
        else:
            self._retries.forget(fetch.pipeline)
            self._refused[(want.model, want.version, want.sha256, want.signature)] = error.reason
            shutil.rmtree(fetch.folder, ignore_errors=True)
        self._rejected(fetch.pipeline, want, error.reason, str(error), error.state)

    def _cancel(self, pipeline: str) -> None:
        """Drop ``pipeline``'s fetch under way (the desired state moved on), if any."""
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
