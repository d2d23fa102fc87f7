"""Artifact transfer: manifests and chunks taken off the link and written to disk (no fsync
per chunk: a torn one fails the final sha256 check), stalled fetches asked for again, and a
transfer the broker cannot complete ended as truncated."""

from __future__ import annotations

import logging
import time

from continuum._fs import atomic_write
from continuum.errors import ProtocolError
from continuum.wire import topics
from continuum.wire.messages import ArtifactManifest
from edge_agent.model_manager._fetch import Fetch, FetchFailedError
from edge_agent.model_manager._install import Installer

log = logging.getLogger(__name__)


class Transfer(Installer):
    """The transfer part of ``ModelManager`` (see there)."""

    def _handle_artifact(self, topic: str, payload: bytes, retained: bool) -> None:
        """Route a message on an artifact topic to the fetches that wait for it."""
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

    def _handle_manifest(self, fetch: Fetch, payload: bytes) -> None:
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

    def _handle_chunk(self, fetch: Fetch, index: int, payload: bytes, retained: bool) -> None:
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
                    FetchFailedError(
                        "truncated_transfer", f"the broker's retained {detail}", retry=True
                    ),
                )
            return
        try:
            # No fsync per chunk: a chunk torn by a power cut fails the final sha256 check.
            atomic_write(fetch.chunk_path(index), payload, durable=False)
        except OSError as exc:
            self._end_fetch(
                fetch,
                FetchFailedError(
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

    def _check_stalls(self, now: float, connected: bool) -> None:
        """Ask the broker again for what stalled fetches miss; end those it cannot complete."""
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
                        FetchFailedError(
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
