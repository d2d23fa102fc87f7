"""Ingest: uplinked samples and feedback from MQTT into the sample and label stores.

``IngestService`` is the protocol logic: it checks each message against the tenant, the known
pipelines and their input schema, drops samples it has already stored (sample ids kept in
SQLite), writes the store durably and records labels; it counts every reject by reason and
never raises. The seen-id database also lists the store files whose ids it holds; a file
written before a crash could record its ids is found and adopted before that pipeline's
next write, so a redelivered message is not stored twice. ``IngestWorker`` is the thin MQTT
runner around it: a persistent MQTT 5 session
on a shared subscription, with each message acknowledged only after its durable write.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cloud_head._mqtt import RejectLog, reason_code_failed
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum.errors import ConfigError, ProtocolError
from continuum.spec import PipelineSpec
from continuum.wire import codec, topics
from continuum.wire.mqtt import BrokerSettings, connect, make_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["IngestService", "IngestWorker", "Outcome", "OutcomeKind"]

_log = logging.getLogger(__name__)

OutcomeKind = Literal["stored", "labelled", "rejected", "failed"]

_SEEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    ingested_at_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, pipeline, sample_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stored_files (
    path TEXT PRIMARY KEY
) WITHOUT ROWID;
"""
_SQL_CHUNK = 500  # stays well under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ingest did with one message.

    ``kind`` is "stored" (a sample batch; ``stored`` new samples, ``duplicates`` already
    there), "labelled" (a feedback batch; ``labels`` recorded), "rejected" (bad input, counted
    under ``reason``; acknowledge it, a resend cannot fix it) or "failed" (the durable write
    failed; do not acknowledge, retry).
    """

    kind: OutcomeKind
    stored: int = 0
    duplicates: int = 0
    labels: int = 0
    reason: str = ""
    detail: str = ""

    @property
    def ack(self) -> bool:
        """Whether the message may be acknowledged to the broker."""
        return self.kind != "failed"


@dataclass(slots=True)
class _Accepted:
    """A message that passed every check, waiting for the durable write."""

    index: int
    samples: codec.SampleBatch | None = None
    feedback: codec.FeedbackBatch | None = None


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


class _RejectedError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class IngestService:
    """Validate, de-duplicate and durably store the samples and labels of one tenant."""

    def __init__(
        self,
        tenant: str,
        pipelines: Mapping[str, PipelineSpec] | Iterable[PipelineSpec],
        store: SampleStore,
        labels: LabelStore,
        seen_db: str | Path,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """Serve ``tenant``; ``seen_db`` is the SQLite file of sample ids already stored."""
        self._tenant = topics.check_name(tenant, "tenant")
        self._store = store
        self._labels = labels
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._pipelines: dict[str, PipelineSpec] = {}
        specs = pipelines.values() if isinstance(pipelines, Mapping) else pipelines
        for spec in specs:
            self.add_pipeline(spec)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._reject_log = RejectLog(_log)
        path = Path(seen_db)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SEEN_SCHEMA)
        self._adopted: set[str] = set()  # pipelines whose unrecorded files were adopted

    @property
    def tenant(self) -> str:
        """The tenant this service ingests for."""
        return self._tenant

    def add_pipeline(self, spec: PipelineSpec) -> None:
        """Accept samples of ``spec`` from now on (replacing an earlier spec of that name)."""
        if spec.tenant != self._tenant:
            raise ConfigError(
                f"pipeline {spec.name!r} belongs to tenant {spec.tenant!r}, not {self._tenant!r}:"
                " give each tenant its own ingest service"
            )
        with self._lock:
            self._pipelines[spec.name] = spec

    def remove_pipeline(self, name: str) -> None:
        """Reject samples of pipeline ``name`` from now on (as unknown_pipeline)."""
        with self._lock:
            self._pipelines.pop(name, None)

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message; never raises."""
        return self.handle_many([(topic, payload)])[0]

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Process messages with one store write for all of them; never raises.

        Outcomes are in message order. A sample that appears twice among ``messages`` is
        stored once and counted as a duplicate the second time.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        accepted: list[_Accepted] = []
        for index, (topic, payload) in enumerate(messages):
            try:
                accepted.append(self._check(index, topic, payload))
            except _RejectedError as rej:
                outcomes[index] = Outcome("rejected", reason=rej.reason, detail=rej.detail)
            except Exception as exc:  # a bug must not stop ingest; count it and go on
                _log.exception("unexpected error checking a message on %s", topic)
                outcomes[index] = Outcome("rejected", reason="internal_error", detail=repr(exc))
        sample_items = [a for a in accepted if a.samples is not None]
        feedback_items = [a for a in accepted if a.feedback is not None]
        if sample_items:
            for index, outcome in self._store_samples(sample_items).items():
                outcomes[index] = outcome
        for item in feedback_items:
            outcomes[item.index] = self._store_feedback(item)
        done = [o if o is not None else Outcome("failed", detail="not processed") for o in outcomes]
        self._count(messages, done)
        return done

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters (stored, duplicates, rejected by reason, labels)."""
        with self._lock:
            return {
                "stored": self._counts["stored"],
                "duplicates": self._counts["duplicates"],
                "labels": self._counts["labels"],
                "batches": self._counts["batches"],
                "feedback_batches": self._counts["feedback_batches"],
                "failed": self._counts["failed"],
                "rejected": dict(self._rejected),
                "rejected_total": sum(self._rejected.values()),
            }

    def is_seen(self, pipeline: str, sample_id: str) -> bool:
        """Return whether ``sample_id`` of ``pipeline`` has been stored."""
        return bool(self._seen_among(pipeline, [sample_id]))

    def prune_seen(self, older_than_ns: int) -> int:
        """Forget sample ids stored before ``older_than_ns``; return how many.

        Only prune ids older than anything an edge outbox could still resend; the store's
        de-duplicating read still hides a late resend, but it would take space.
        """
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM seen WHERE tenant = ? AND ingested_at_ns < ?",
                (self._tenant, older_than_ns),
            )
            return cursor.rowcount

    def close(self) -> None:
        """Close the seen-id database (the stores are the caller's)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> IngestService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- checks ----------------------------------------------------------------------------

    def _check(self, index: int, topic: str, payload: bytes) -> _Accepted:
        try:
            parsed = topics.parse(topic)
        except ProtocolError as exc:
            raise _RejectedError(exc.reason, str(exc)) from exc
        if parsed.tenant != self._tenant:
            raise _RejectedError(
                "wrong_tenant", f"topic of tenant {parsed.tenant!r}, this is {self._tenant!r}"
            )
        if parsed.kind not in ("samples", "feedback"):
            raise _RejectedError("unexpected_topic", f"ingest does not take {parsed.kind} messages")
        with self._lock:
            spec = self._pipelines.get(parsed.pipeline)
        if spec is None:
            raise _RejectedError("unknown_pipeline", f"no pipeline {parsed.pipeline!r} is deployed")
        try:
            batch: codec.SampleBatch | codec.FeedbackBatch
            if parsed.kind == "samples":
                batch = codec.decode_samples(bytes(payload))
            else:
                batch = codec.decode_feedback(bytes(payload))
        except ProtocolError as exc:
            raise _RejectedError(exc.reason, str(exc)) from exc
        if batch.node != parsed.node:
            raise _RejectedError(
                "node_mismatch", f"batch of node {batch.node!r} on the topic of {parsed.node!r}"
            )
        if batch.pipeline != parsed.pipeline:
            raise _RejectedError(
                "pipeline_mismatch",
                f"batch of pipeline {batch.pipeline!r} on the topic of {parsed.pipeline!r}",
            )
        if isinstance(batch, codec.FeedbackBatch):
            return _Accepted(index, feedback=batch)
        if batch.data_class.rank > spec.data_class.rank:
            raise _RejectedError(
                "data_class_mismatch",
                f"batch is {batch.data_class.value}, pipeline {spec.name!r} stores at most "
                f"{spec.data_class.value}",
            )
        self._check_schema(spec, batch)
        return _Accepted(index, samples=batch)

    @staticmethod
    def _check_schema(spec: PipelineSpec, batch: codec.SampleBatch) -> None:
        schema = spec.edge.input
        want_shape = tuple(schema.shape)
        want_dtype = _dtype(schema.dtype)  # comparing dtypes is cheap; dtype.name is not
        for record in batch.records:
            tensor = record.tensor
            if tensor.shape != want_shape or tensor.dtype != want_dtype:
                raise _RejectedError(
                    "schema_mismatch",
                    f"sample {batch.sample_id(record)}: expected {schema.dtype}"
                    f"{list(want_shape)}, got {tensor.dtype.name}{list(tensor.shape)}",
                )

    # -- durable writes --------------------------------------------------------------------

    def _store_samples(self, items: list[_Accepted]) -> dict[int, Outcome]:
        """De-duplicate, append, flush once, then record the ids; map message index -> outcome."""
        now_ns = self._clock_ns()
        outcomes: dict[int, Outcome] = {}
        claimed: dict[str, set[str]] = {}  # pipeline -> ids stored by earlier messages here
        new_by_pipeline: dict[str, list[str]] = {}
        try:
            for pipeline in {item.samples.pipeline for item in items if item.samples}:
                if pipeline not in self._adopted:
                    self._adopt_unrecorded_files(pipeline, now_ns)
                    self._adopted.add(pipeline)
            for item in items:
                batch = item.samples
                assert batch is not None
                ids = [batch.sample_id(r) for r in batch.records]
                taken = claimed.setdefault(batch.pipeline, set())
                seen = self._seen_among(batch.pipeline, ids) | taken
                fresh: list[codec.SampleRecord] = []
                fresh_ids: list[str] = []
                for record, sample_id in zip(batch.records, ids, strict=True):
                    if sample_id in seen:
                        continue
                    seen.add(sample_id)
                    fresh.append(record)
                    fresh_ids.append(sample_id)
                taken.update(fresh_ids)
                if fresh:
                    new = dataclasses.replace(batch, records=tuple(fresh))
                    self._store.append(self._tenant, new, ingested_at_ns=now_ns)
                new_by_pipeline.setdefault(batch.pipeline, []).extend(fresh_ids)
                outcomes[item.index] = Outcome(
                    "stored", stored=len(fresh), duplicates=len(ids) - len(fresh)
                )
            written = self._store.flush()
        except Exception as exc:
            # Nothing is acknowledged, so the broker redelivers; drop the rows not yet written
            # and adopt the files that were, so the redelivery does not store them again.
            self._store.discard()
            _log.error("writing the sample store failed, will retry: %r", exc)
            self._adopt_quietly(now_ns)
            return {item.index: Outcome("failed", detail=repr(exc)) for item in items}
        try:
            self._record_seen(new_by_pipeline, now_ns, written)
        except sqlite3.Error as exc:
            # The samples are durable, so acknowledging is safe; the next write adopts the
            # unrecorded files before it de-duplicates, so a resend is not stored again.
            self._adopted.clear()
            _log.error("recording stored sample ids failed: %r", exc)
        return outcomes

    def _store_feedback(self, item: _Accepted) -> Outcome:
        batch = item.feedback
        assert batch is not None
        try:
            written = self._labels.record(self._tenant, batch, source="delayed_feedback")
        except (sqlite3.Error, OSError) as exc:
            _log.error("writing labels failed, will retry: %r", exc)
            return Outcome("failed", detail=repr(exc))
        return Outcome("labelled", labels=written)

    def _seen_among(self, pipeline: str, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), _SQL_CHUNK):
                chunk = ids[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT sample_id FROM seen WHERE tenant = ? AND pipeline = ? "
                    f"AND sample_id IN ({marks})",
                    (self._tenant, pipeline, *chunk),
                ).fetchall()
                found.update(r[0] for r in rows)
        return found

    def _adopt_unrecorded_files(self, pipeline: str, now_ns: int) -> int:
        """Record the ids of store files no seen-id commit covers (a crash came in between).

        Returns the number of files adopted.
        """
        paths = self._store.files(self._tenant, pipeline)
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT path FROM stored_files")}
        unrecorded = [p for p in paths if p not in known]
        self._adopt(unrecorded, now_ns)
        if unrecorded:
            _log.warning(
                "adopted %d store file(s) of %s written before a crash recorded their ids",
                len(unrecorded),
                pipeline,
            )
        return len(unrecorded)

    def _adopt(self, paths: Sequence[str], now_ns: int) -> None:
        ids: dict[str, list[str]] = {}
        for path in paths:
            for pipeline, sample_id in self._store.file_sample_ids(path):
                ids.setdefault(pipeline, []).append(sample_id)
        self._record_seen(ids, now_ns, paths)

    def _adopt_quietly(self, now_ns: int) -> None:
        try:
            self._adopt(self._store.flush(), now_ns)
        except Exception as exc:  # the next write adopts them (see _adopted) or reads dedup
            self._adopted.clear()
            _log.error("recording the files of a failed write failed: %r", exc)

    def _record_seen(
        self, ids_by_pipeline: Mapping[str, list[str]], now_ns: int, paths: Sequence[str] = ()
    ) -> None:
        rows = [
            (self._tenant, pipeline, sample_id, now_ns)
            for pipeline, ids in ids_by_pipeline.items()
            for sample_id in ids
        ]
        if not rows and not paths:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)", rows)
                self._db.executemany(
                    "INSERT OR IGNORE INTO stored_files VALUES (?)", [(p,) for p in paths]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _count(self, messages: Sequence[tuple[str, bytes]], outcomes: list[Outcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                if outcome.kind == "stored":
                    self._counts["batches"] += 1
                    self._counts["stored"] += outcome.stored
                    self._counts["duplicates"] += outcome.duplicates
                elif outcome.kind == "labelled":
                    self._counts["feedback_batches"] += 1
                    self._counts["labels"] += outcome.labels
                elif outcome.kind == "rejected":
                    self._rejected[outcome.reason] += 1
                else:
                    self._counts["failed"] += 1
        for (topic, _), outcome in zip(messages, outcomes, strict=True):
            if outcome.kind == "rejected":
                self._reject_log.reject(outcome.reason, topic, outcome.detail)


class _Stop:
    """Queue sentinel that ends the processing thread."""


_Message = tuple[str, bytes, int, int]  # topic, payload, mid, qos


class IngestWorker:
    """Run an ``IngestService`` on MQTT: shared subscription, persistent session, late acks.

    Messages are handled on a named processing thread in groups (whatever has arrived, up to
    ``max_group``) so one store write covers many messages; each is acknowledged, in arrival
    order, only after its group was written. A failed write is retried with capped
    exponential backoff, never acknowledged early; on ``stop`` unacknowledged messages stay
    with the broker, which redelivers them to the session when it comes back.
    """

    def __init__(
        self,
        service: IngestService,
        broker: BrokerSettings,
        *,
        client_id: str | None = None,
        share_group: str = topics.INGEST_SHARE_GROUP,
        max_group: int = 256,
        retry_max_s: float = 30.0,
    ) -> None:
        """Prepare a worker; give each replica its own stable ``client_id`` (its session)."""
        self._service = service
        self._broker = broker
        self._client_id = client_id or f"ctm-ingest-{service.tenant}"
        self._filters = [
            topics.shared(topics.pipeline_filter(service.tenant, "samples"), share_group),
            topics.shared(topics.pipeline_filter(service.tenant, "feedback"), share_group),
        ]
        self._max_group = max_group
        self._retry_max_s = retry_max_s
        self._queue: queue.Queue[_Message | _Stop] = queue.Queue()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._counts: Counter[str] = Counter()

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up and subscribed."""
        return self._connected.is_set()

    def start(self) -> None:
        """Connect, subscribe and start processing; raises NotReadyError if the broker is down."""
        if self._client is not None:
            raise RuntimeError("the ingest worker is already running")
        self._stopping.clear()
        client = make_client(self._client_id, self._broker, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._thread = threading.Thread(
            target=self._process_loop, name=f"ingest-{self._service.tenant}", daemon=True
        )
        self._thread.start()
        self._client = client  # before connecting: the processor acks through it
        try:
            connect(client, self._broker)
        except BaseException:
            self._client = None
            self._queue.put(_Stop())
            self._thread.join()
            self._thread = None
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the group in hand, acknowledge it and disconnect; the session persists."""
        self._stopping.set()
        self._queue.put(_Stop())
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("ingest processing thread did not stop within %.1f s", timeout_s)
            self._thread = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._connected.clear()
        # Messages queued after the stop are unacknowledged; the broker redelivers them.
        while not self._queue.empty():
            self._queue.get_nowait()

    def stats(self) -> dict[str, Any]:
        """Return the service counters plus the connection state and queue depth."""
        snapshot = self._service.stats()
        snapshot["connected"] = self.connected
        snapshot["queued"] = self._queue.qsize()
        snapshot["acked"] = self._counts["acked"]
        snapshot["retries"] = self._counts["retries"]
        return snapshot

    def __enter__(self) -> IngestWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the ingest session: %s", reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters])
        self._connected.set()
        _log.info(
            "ingest %s connected (session present: %s)",
            self._client_id,
            getattr(flags, "session_present", None),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            _log.warning(
                "ingest %s lost the broker (%s); reconnecting", self._client_id, reason_code
            )
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    # -- processing thread -----------------------------------------------------------------

    def _process_loop(self) -> None:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            group = [first]
            stop_after = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stop_after = True
                    break
                group.append(item)
            self._process(group)
            if stop_after:
                return

    def _process(self, group: list[_Message]) -> None:
        pending = list(range(len(group)))
        delay = 0.1
        failing = False
        while True:
            outcomes = self._service.handle_many([(group[i][0], group[i][1]) for i in pending])
            pending = [i for i, o in zip(pending, outcomes, strict=True) if not o.ack]
            if not pending:
                break
            if not failing:
                _log.error("ingest write failed; retrying with backoff, nothing is acked")
                failing = True
            self._counts["retries"] += 1
            if self._stopping.wait(delay):
                return  # unacknowledged: the broker redelivers the whole group later
            delay = min(delay * 2, self._retry_max_s)
        if failing:
            _log.warning("ingest writes recovered")
        client = self._client
        for _topic, _payload, mid, qos in group:
            if client is not None and qos > 0:
                client.ack(mid, qos)
            self._counts["acked"] += 1
