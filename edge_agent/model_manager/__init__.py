"""Which model each pipeline serves: desired state in, verified artifacts to the runtime.

The manager follows the node's retained desired state, taken only when signed whole by the
tenant, for this node, valid now and newer than the last (``_desired``).  For a pipeline
whose desired version differs from the serving one it checks the signature, fetches the
artifact's retained chunks (resumable: chunks already on disk are kept across reconnects and
restarts), checks size and sha256, moves the file atomically into
``models/<pipeline>/<version>.onnx``, loads it and runs one probe batch, and only then
hands it to the runtime, which swaps between batches.  Anything that fails is reported
as rejected (or failed) with the reason and the old model keeps serving: a wrong digest or
signature, a model that does not load, and a truncated transfer (the broker's retained
copy of a chunk has the wrong size, or chunks stay missing after the manifest arrived and
the broker was asked again).  Malformed or unexpected messages are counted by reason and
dropped; nothing received can stop it.

The rooms, each a private module: ``_desired`` (following the desired state, retries),
``_transfer`` (chunks, manifests, stalls), ``_install`` (serving a finished fetch, a kept
version or the saved model), ``_artifact`` (assembly, digest and signature checks, load and
probe), ``_pointer`` (the saved-model pointer), ``_taken`` (the last desired state taken),
``_fetch`` (one transfer and its retry schedule), ``_core`` (shared state, reporting,
ending a fetch).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from edge_agent.model_manager._desired import DesiredFollower
from edge_agent.model_manager._serving import BackendOpener, ServingModel, Subscriber

__all__ = ["BackendOpener", "ModelManager", "ServingModel", "Subscriber"]

log = logging.getLogger(__name__)

#: Bound on undecoded messages waiting for the worker (chunks are up to 16 MiB each).
_INBOX_MAX_BYTES = 64 * 1024 * 1024
_TICK_S = 0.5


class ModelManager(DesiredFollower):
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
            truncated chunks, a disk error) is tried again about this long after, then
            after about twice as long each time (jittered, up to 15 minutes), while the
            desired state names it.
        clock: the time (Unix seconds) a desired state's validity is judged by.
        clock_skew_s: how far this node's clock may be off the cloud's: a desired state
            issued up to this long in the future, or expired up to this long ago, is taken.

    Raises:
        ArtifactError: ``public_key_pem`` is not a public key.
        ValueError: a stall or retry bound is not positive, or the clock skew is negative.
    """

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
        else:
            self._handle_artifact(topic, payload, retained)

    def _tick(self) -> None:
        now = time.monotonic()
        connected = self._is_connected()
        self._retry_due(now, connected)
        self._check_stalls(now, connected)
