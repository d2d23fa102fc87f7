"""Following the desired state: a signed, fresh desired model per pipeline starts a fetch
(or serves a version kept on disk), and a failed fetch is tried again while it is desired.

A desired state is taken only when the tenant's key signed the whole document (checked
first: a forged field, a made-up generation included, is never read), it names this tenant
and node, it is valid now (issued no later, and expiring no earlier, than the clock-skew
allowance lets pass) and its generation is above the last one taken, which is kept on disk
across restarts (``_taken``; the same document delivered again is taken as such).  Within
it, an entry that would take a pipeline to an older version than it serves is refused
unless the cloud marked it ``rollback``.  Each refusal is counted by reason and logged
once; what serves keeps serving, and the cloud's next real desired state is taken as usual.
"""

from __future__ import annotations

import logging
import math

from continuum import signing
from continuum.errors import ArtifactError, ProtocolError
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState, ReportedModel, version_order
from edge_agent.model_manager._fetch import Fetch
from edge_agent.model_manager._taken import save_taken
from edge_agent.model_manager._transfer import Transfer

log = logging.getLogger(__name__)


class DesiredFollower(Transfer):
    """The desired-state part of ``ModelManager`` (see there)."""

    def _handle_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the retained desired state was cleared: keep serving what we have
        try:
            desired = DesiredState.from_payload(payload)
        except ProtocolError as exc:
            self._reject_message(f"desired_{exc.reason}", f"malformed desired state: {exc}")
            return
        refusal = self._refusal(desired)
        if refusal is not None:
            self._reject_message(*refusal)
            return
        newer = desired.generation > self._generation
        self._generation = desired.generation
        self._applied_signature = desired.signature
        if newer:
            save_taken(self._state_dir, payload)
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
            with self._lock:
                serving = self._serving.get(name)
            if (
                serving is not None
                and not want.rollback
                and version_order(want.version) < version_order(serving.version)
            ):
                self._reject_message(
                    "desired_downgrade",
                    f"desired state takes pipeline {name!r} from {serving.version} back to "
                    f"{want.version} without marking it a rollback",
                )
                continue
            self._follow(name, want, desired.generation, newer)

    def _refusal(self, desired: DesiredState) -> tuple[str, str] | None:
        """Return (reason, detail) when ``desired`` must not be taken, else None.

        The signature comes first: nothing else in a document the tenant did not sign is
        believed (a forged generation of 2**63-1 must not lock out the real ones).
        """
        generation = desired.generation
        if desired.signature is None:
            return "desired_unsigned", f"desired state generation {generation} is not signed"
        try:
            signing.verify_desired(
                self._public_key, desired.model_dump(mode="json"), desired.signature
            )
        except ArtifactError as exc:
            return "desired_bad_signature", f"desired state generation {generation}: {exc}"
        if desired.tenant != self.tenant or desired.node != self.node:
            return (
                "desired_wrong_node",
                f"desired state for node {desired.node!r} of tenant {desired.tenant!r} on "
                f"the topic of {self.node!r} of {self.tenant!r}",
            )
        now = self._clock()
        if desired.issued_at > now + self._clock_skew_s:
            return (
                "desired_not_yet_valid",
                f"desired state generation {generation} is issued {desired.issued_at - now:.0f} "
                f"s in the future (more than the {self._clock_skew_s:.0f} s clock-skew "
                "allowance): check this node's clock",
            )
        if desired.expires_at < now - self._clock_skew_s:
            return (
                "desired_expired",
                f"desired state generation {generation} expired {now - desired.expires_at:.0f} "
                "s ago; the cloud re-issues desired states before they expire",
            )
        if generation < self._generation or (
            generation == self._generation and desired.signature != self._applied_signature
        ):
            return (
                "desired_stale",
                f"desired generation {generation} is not above {self._generation}, the last "
                "one taken (a replayed or out-of-order desired state)",
            )
        return None

    def _follow(self, name: str, want: DesiredModel, generation: int, newer: bool) -> None:
        """Move pipeline ``name`` toward ``want``, unless it serves, fetches or refused it."""
        retry = self._retries.get(name)
        if retry is not None and retry.want != want:
            self._retries.forget(name)  # the desired state moved on
        if self._settled(name, want, newer):
            return
        self._cancel(name)
        try:
            self._loader.verify_signature(want.model, want.version, want.sha256, want.signature)
        except ArtifactError as exc:
            self._refused[(want.model, want.version, want.sha256, want.signature)] = "bad_signature"
            self._rejected(name, want, "bad_signature", str(exc), "rejected")
            return
        if self._serve_kept(name, want):
            return
        self._start_fetch(name, want, generation)

    def _settled(self, name: str, want: DesiredModel, newer: bool) -> bool:
        """Whether ``want`` needs nothing done: it serves (any fetch of another version is
        cancelled then), is being fetched, failed for good, or failed and was only
        delivered again."""
        with self._lock:
            serving = self._serving.get(name)
            reported = self._reported.get(name)
        wanted = (want.model, want.version, want.sha256)
        if serving is not None and (serving.model, serving.version, serving.sha256) == wanted:
            self._retries.forget(name)
            self._cancel(name)
            return True
        current = self._fetches.get(name)
        if current is not None and current.want == want:
            return True
        if (want.model, want.version, want.sha256, want.signature) in self._refused:
            return True
        # The same desired state again (a redelivery) after a failure: do not retry yet.
        return (
            not newer
            and reported is not None
            and reported.state in ("rejected", "failed")
            and (reported.model, reported.version, reported.sha256) == wanted
        )

    def _start_fetch(self, name: str, want: DesiredModel, generation: int) -> None:
        """Subscribe to ``want``'s artifact, keeping the chunks already on disk."""
        # One folder per pipeline: two pipelines fetching the same artifact must not
        # delete each other's chunks when one of them finishes first.
        folder = self._downloads_dir / name / f"{want.model}-{want.version}-{want.sha256[:16]}"
        fetch = Fetch.resume(name, want, generation, folder)
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

    def _retry_due(self, now: float, connected: bool) -> None:
        """Fetch again the failed models whose retry fell due by ``now`` (monotonic), only
        while connected."""
        for name, retry in self._retries.items():
            if connected and now >= retry.due and name not in self._fetches:
                retry.due = math.inf  # until this attempt ends (``_end_fetch``)
                log.info(
                    "pipeline %s: fetching %s %s again after a failed attempt",
                    name,
                    retry.want.model,
                    retry.want.version,
                )
                self._follow(name, retry.want, retry.generation, newer=True)
