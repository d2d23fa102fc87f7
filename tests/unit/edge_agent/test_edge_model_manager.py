"""ModelManager without a broker: desired state in, verified models out, rejections reported."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud_head.desired_state import signed_desired_state
from continuum import Pipeline, select
from continuum.signing import generate_keypair
from continuum.spec import PipelineSpec
from continuum.wire import topics
from continuum.wire.messages import (
    SCHEMA_VERSION,
    ArtifactManifest,
    DesiredModel,
    DesiredState,
    ReportedState,
)
from edge_agent.model_manager import ModelManager, ServingModel
from tests.edge_agent_kit import build_model, build_wrong_input_model, desired_for, wait_for

TENANT, NODE, PIPELINE = "acme", "edge-1", "inspect"


class RecordingLink:
    """Stands in for the MQTT link: records what the manager subscribes to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed: set[str] = set()
        self.resubscribed: list[str] = []

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        with self.lock:
            self.subscribed.update(topics)

    def unsubscribe(self, topics: Iterable[str]) -> None:
        with self.lock:
            self.subscribed.difference_update(topics)

    def resubscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        with self.lock:
            self.resubscribed.extend(topics)

    def chunk_topics(self) -> list[str]:
        with self.lock:
            return sorted(t for t in self.subscribed if "/chunks/" in t)


def _spec() -> PipelineSpec:
    pipe = Pipeline(PIPELINE, tenant=TENANT, data_class="internal")
    pipe.edge(model="inspector", backend="onnxruntime", shape=(1, 8, 8))
    pipe.uplink(select.low_confidence(0.5))
    return pipe.spec


class Node:
    """One manager on a state dir, with everything it hands out recorded."""

    def __init__(
        self,
        state_dir: Path,
        keys: tuple[bytes, bytes],
        keep_versions: int = 3,
        **options: Any,
    ) -> None:
        self.private, public_pem = keys
        self.sent: dict[tuple[int, str], DesiredState] = {}
        self.link = RecordingLink()
        self.models: list[ServingModel] = []
        self.reports: list[ReportedState] = []
        self.manager = ModelManager(
            node=NODE,
            tenant=TENANT,
            state_dir=state_dir,
            public_key_pem=public_pem,
            pipelines={PIPELINE: _spec()},
            link=self.link,
            on_model=self.models.append,
            on_report=self.reports.append,
            keep_versions=keep_versions,
            **options,
        )

    def desire(self, want: DesiredModel, generation: int = 1) -> None:
        """Offer the desired state ``want`` for the pipeline, signed as the cloud signs it;
        the same ``want`` and generation again is the same document again (a redelivery)."""
        key = (generation, want.model_dump_json())
        if key not in self.sent:
            self.sent[key] = self.signed({PIPELINE: want}, generation)
        self.offer_desired(self.sent[key])

    def signed(
        self, pipelines: dict[str, DesiredModel], generation: int, **fields: Any
    ) -> DesiredState:
        """Return this node's desired state, signed by the tenant's key; ``fields`` override
        ``tenant``, ``node``, ``issued_at`` or ``validity_s``."""
        return signed_desired_state(
            fields.pop("signer", self.private),
            tenant=fields.pop("tenant", TENANT),
            node=fields.pop("node", NODE),
            pipelines=pipelines,
            generation=generation,
            issued_at=fields.pop("issued_at", time.time()),
            validity_s=fields.pop("validity_s", 3600.0),
        )

    def offer_desired(self, state: DesiredState) -> None:
        self.manager.offer(self.manager.desired_topic, state.to_payload())

    def send_chunks(
        self,
        artifact: Path,
        want: DesiredModel,
        only: Iterable[int] | None = None,
        tamper: int | None = None,
        cut: int | None = None,
        retained: bool = False,
    ) -> None:
        data = artifact.read_bytes()
        for index in range(want.chunks) if only is None else only:
            piece = bytearray(data[index * want.chunk_size : (index + 1) * want.chunk_size])
            if index == tamper:
                piece[0] ^= 0xFF
            if index == cut:
                del piece[len(piece) // 2 :]
            topic = topics.artifact_chunk(TENANT, want.model, want.version, index)
            self.manager.offer(topic, bytes(piece), retained)

    def send_manifest(self, want: DesiredModel) -> None:
        manifest = ArtifactManifest(
            schema_version=SCHEMA_VERSION, **want.model_dump(exclude={"rollback"})
        )
        topic = topics.artifact_manifest(TENANT, want.model, want.version)
        self.manager.offer(topic, manifest.to_payload(), True)

    def state(self) -> str | None:
        if not self.reports:
            return None
        entry = self.reports[-1].pipelines.get(PIPELINE)
        return None if entry is None else f"{entry.version}:{entry.state}"

    def close(self) -> None:
        self.manager.stop()
        for model in self.models:
            model.backend.close()


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return generate_keypair()


@contextlib.contextmanager
def started(state_dir: Path, keys: tuple[bytes, bytes], **options: Any) -> Iterator[Node]:
    """A started ``Node``, closed on the way out."""
    made = Node(state_dir, keys, **options)
    made.manager.start()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def node(tmp_path: Path, keys: tuple[bytes, bytes]) -> Iterator[Node]:
    with started(tmp_path / "state", keys) as made:
        yield made


class TestFollowingDesiredState:
    def test_a_signed_artifact_is_fetched_verified_installed_and_handed_over(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        assert node.manager.desired_topic in node.link.subscribed
        node.desire(want)
        wait_for(lambda: len(node.link.chunk_topics()) == want.chunks)
        assert topics.artifact_manifest(TENANT, "inspector", "v1") in node.link.subscribed
        assert node.state() == "v1:fetching"
        node.send_chunks(artifact, want)
        wait_for(lambda: node.models)
        (model,) = node.models
        assert (model.version, model.sha256) == ("v1", want.sha256)
        assert model.path == tmp_path / "state" / "models" / PIPELINE / "v1.onnx"
        assert model.path.read_bytes() == artifact.read_bytes()
        wait_for(lambda: node.state() == "v1:serving")
        assert node.link.chunk_topics() == []  # nothing left subscribed for the transfer
        assert not list((tmp_path / "state" / "downloads").rglob("*.chunk"))

    def test_models_run_with_the_configured_inference_threads(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        with started(tmp_path / "state", keys, inference_threads=2) as made:
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, keys[0], model="inspector", version="v1")
            made.desire(want)
            wait_for(lambda: len(made.link.chunk_topics()) == want.chunks)
            made.send_chunks(artifact, want)
            wait_for(lambda: made.models)
            session = made.models[0].backend._session  # type: ignore[attr-defined]
            assert session.get_session_options().intra_op_num_threads == 2

    def test_the_same_desired_state_again_changes_nothing(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v1:serving")
        node.desire(want)
        time.sleep(0.3)
        assert len(node.models) == 1
        assert node.link.chunk_topics() == []

    def test_only_the_newest_versions_are_kept_on_disk(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        with started(tmp_path / "state", keys, keep_versions=2) as made:
            for generation, version in enumerate(("v1", "v2", "v3"), start=1):
                artifact = build_model(tmp_path / f"{version}.onnx", favour=generation)
                want = desired_for(artifact, keys[0], model="inspector", version=version)
                made.desire(want, generation)
                made.send_chunks(artifact, want)
                wait_for(lambda v=version: made.state() == f"{v}:serving")  # type: ignore[misc]
            files = sorted(p.name for p in (tmp_path / "state" / "models" / PIPELINE).glob("*"))
        assert files == ["current.json", "v2.onnx", "v3.onnx"]

    def test_a_rollback_to_a_kept_version_needs_no_download(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        wants = {}
        for generation, version in enumerate(("v1", "v2"), start=1):
            artifact = build_model(tmp_path / f"{version}.onnx", favour=generation)
            wants[version] = desired_for(artifact, keys[0], model="inspector", version=version)
            node.desire(wants[version], generation)
            node.send_chunks(artifact, wants[version])
            wait_for(lambda v=version: node.state() == f"{v}:serving")  # type: ignore[misc]
        subscribed: list[str] = []
        original = node.link.subscribe
        node.link.subscribe = lambda t, qos=1: (subscribed.extend(t), original(t, qos))  # type: ignore[method-assign]
        node.desire(wants["v1"].model_copy(update={"rollback": True}), 3)
        wait_for(lambda: node.state() == "v1:serving")
        assert [m.version for m in node.models] == ["v1", "v2", "v1"]
        assert subscribed == []  # served from disk: no manifest, no chunks

    def test_chunks_already_on_disk_are_not_fetched_again_after_a_restart(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1", chunk_size=256)
        first = Node(tmp_path / "state", keys)
        first.manager.start()
        first.desire(want)
        wait_for(lambda: len(first.link.chunk_topics()) == want.chunks)
        first.send_chunks(artifact, want, only=range(0, want.chunks, 2))
        wait_for(lambda: len(first.link.chunk_topics()) == want.chunks // 2)
        first.close()

        with started(tmp_path / "state", keys) as second:
            second.sent = first.sent  # the broker sends the retained desired state again
            second.desire(want)
            wait_for(lambda: second.link.chunk_topics())
            missing = second.link.chunk_topics()
            assert missing == sorted(
                topics.artifact_chunk(TENANT, "inspector", "v1", i)
                for i in range(1, want.chunks, 2)
            )
            second.send_chunks(artifact, want, only=range(1, want.chunks, 2))
            wait_for(lambda: second.state() == "v1:serving")

    def test_a_restarted_node_serves_its_saved_model_only_if_it_still_verifies(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v1:serving")

        again = Node(tmp_path / "state", keys)
        restored = again.manager.restore()
        assert restored[PIPELINE].version == "v1"
        restored[PIPELINE].backend.close()

        saved = tmp_path / "state" / "models" / PIPELINE / "v1.onnx"
        saved.write_bytes(saved.read_bytes() + b"\x00")
        tampered = Node(tmp_path / "state", keys)
        assert tampered.manager.restore() == {}


class TestRejections:
    def test_a_tampered_chunk_is_rejected_and_reported(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        node.send_chunks(artifact, want, tamper=0)
        wait_for(lambda: node.state() == "v1:rejected")
        error = node.reports[-1].pipelines[PIPELINE].error or ""
        assert error.startswith("digest_mismatch")
        assert node.models == []
        assert not (tmp_path / "state" / "models" / PIPELINE / "v1.onnx").exists()

    def test_after_a_tampered_transfer_the_fetch_is_tried_again_and_succeeds(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        # One bad live copy of a chunk must not end the rollout: the broker's retained
        # chunks are intact, and the desired state still names the version.
        with started(tmp_path / "state", keys, retry_s=0.3) as node:
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, keys[0], model="inspector", version="v1")
            node.desire(want)
            node.send_chunks(artifact, want, tamper=0)
            wait_for(lambda: node.state() == "v1:rejected")
            assert node.link.chunk_topics() == []
            node.desire(want)  # a redelivery of the same desired state changes nothing
            wait_for(lambda: node.state() == "v1:fetching", timeout_s=10.0)
            assert len(node.link.chunk_topics()) == want.chunks
            node.send_chunks(artifact, want)
            wait_for(lambda: node.state() == "v1:serving")
            assert [m.version for m in node.models] == ["v1"]

    def test_a_failing_transfer_is_tried_again_less_and_less_often(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        with started(tmp_path / "state", keys, retry_s=0.3) as node:
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, keys[0], model="inspector", version="v1")
            node.desire(want)
            fetching_at: list[float] = []
            for _ in range(4):
                wait_for(lambda: node.state() == "v1:fetching", timeout_s=10.0)
                fetching_at.append(time.monotonic())
                node.send_chunks(artifact, want, tamper=0)
                wait_for(lambda: node.state() == "v1:rejected")
            gaps = [b - a for a, b in itertools.pairwise(fetching_at)]
            # The delays are jittered (continuum._retry.Backoff: the n-th is drawn from the
            # upper half of retry_s * 2**n), so two doublings apart they grow for sure.
            assert gaps[2] > 1.5 * gaps[0]
            # A new desired version ends the retries of the old one.
            other = build_model(tmp_path / "v2.onnx", favour=1)
            node.desire(desired_for(other, keys[0], model="inspector", version="v2"), 2)
            wait_for(lambda: node.state() == "v2:fetching")
            time.sleep(1.5)
            assert node.state() == "v2:fetching"

    def test_a_signature_by_another_key_is_rejected_before_any_download(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        other_private, _ = generate_keypair()
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, other_private, model="inspector", version="v1")
        node.desire(want)
        wait_for(lambda: node.state() == "v1:rejected")
        assert (node.reports[-1].pipelines[PIPELINE].error or "").startswith("bad_signature")
        assert node.link.chunk_topics() == []

    def test_a_signed_model_that_does_not_fit_the_pipeline_is_rejected(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_wrong_input_model(tmp_path / "wrong.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v9")
        node.desire(want)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v9:rejected")
        assert (node.reports[-1].pipelines[PIPELINE].error or "").startswith("load_failed")
        assert node.models == []
        assert not (tmp_path / "state" / "models" / PIPELINE / "v9.onnx").exists()

    @pytest.mark.parametrize(
        ("graph", "names"),
        [
            # finite on the all-zeros frame, NaN once a pixel is above 0
            ("nan_on_real_frames", "NaN or infinite"),
            # one row whatever the batch: the runtime would reject every micro-batch
            ("one_row_per_batch", r"shape \(1, 4\) for 2 input"),
        ],
    )
    def test_a_model_that_fails_real_frames_is_refused_at_load(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node, graph: str, names: str
    ) -> None:
        artifact = _hostile_model(tmp_path / f"{graph}.onnx", graph)
        want = desired_for(artifact, keys[0], model="inspector", version="v9")
        node.desire(want)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v9:rejected")
        error = node.reports[-1].pipelines[PIPELINE].error or ""
        assert error.startswith("load_failed")
        assert re.search(names, error), error
        assert node.models == []

    def test_a_rejection_keeps_the_serving_model(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        good = build_model(tmp_path / "v1.onnx")
        want = desired_for(good, keys[0], model="inspector", version="v1")
        node.desire(want, 1)
        node.send_chunks(good, want)
        wait_for(lambda: node.state() == "v1:serving")
        bad = build_model(tmp_path / "v2.onnx", favour=4)
        want2 = desired_for(bad, keys[0], model="inspector", version="v2")
        node.desire(want2, 2)
        node.send_chunks(bad, want2, tamper=1)
        wait_for(lambda: node.state() == "v2:rejected")
        assert node.manager.serving()[PIPELINE].version == "v1"
        pointer = json.loads(
            (tmp_path / "state" / "models" / PIPELINE / "current.json").read_text()
        )
        assert pointer["version"] == "v1"


class TestBadInput:
    def test_garbage_is_counted_by_reason_and_the_manager_keeps_working(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        desired = node.manager.desired_topic
        node.manager.offer(desired, b"\x00\xffnot json")
        node.manager.offer(desired, b'{"node": "edge-1"}')
        node.offer_desired(node.signed({}, 1, node="edge-2"))
        node.manager.offer("ctm/acme/nodes/edge-1/whatever", b"x")
        node.manager.offer(topics.artifact_chunk(TENANT, "inspector", "v7", 0), b"stray")
        wait_for(lambda: sum(node.manager.rejected_messages.values()) == 5)
        assert node.manager.rejected_messages == {
            "desired_invalid_json": 1,
            "desired_schema": 1,
            "desired_wrong_node": 1,
            "unexpected_topic": 1,
            "unexpected_artifact": 1,
        }
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want, generation=5)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v1:serving")
        node.desire(want, generation=4)
        wait_for(lambda: node.manager.rejected_messages.get("desired_stale") == 1)

    def test_a_downgrade_is_taken_only_when_the_signed_order_marks_it_a_rollback(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        wants = {}
        for generation, version in enumerate(("v9", "v10"), start=1):
            artifact = build_model(tmp_path / f"{version}.onnx", favour=generation)
            wants[version] = desired_for(artifact, keys[0], model="inspector", version=version)
            node.desire(wants[version], generation)
            node.send_chunks(artifact, wants[version])
            wait_for(lambda v=version: node.state() == f"{v}:serving")  # type: ignore[misc]
        node.desire(wants["v9"], 3)  # v9 is older than v10 (natural order)
        wait_for(lambda: node.manager.rejected_messages == {"desired_downgrade": 1})
        assert node.manager.serving()[PIPELINE].version == "v10"
        # Flipping the mark on a signed order breaks its signature.
        unmarked = node.signed({PIPELINE: wants["v9"]}, 4)
        marked = unmarked.pipelines[PIPELINE].model_copy(update={"rollback": True})
        node.offer_desired(unmarked.model_copy(update={"pipelines": {PIPELINE: marked}}))
        wait_for(lambda: node.manager.rejected_messages.get("desired_bad_signature") == 1)
        node.desire(wants["v9"].model_copy(update={"rollback": True}), 5)
        wait_for(lambda: node.state() == "v9:serving")

    def test_the_clock_skew_allowance_bounds_validity_and_a_redelivery_is_no_replay(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        now = 1_763_800_000.0
        with started(tmp_path / "state", keys, clock=lambda: now, clock_skew_s=60.0) as made:
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, keys[0], model="inspector", version="v1")
            pipelines = {PIPELINE: want}
            made.offer_desired(made.signed(pipelines, 1, issued_at=now + 61.0))
            made.offer_desired(made.signed(pipelines, 2, issued_at=now - 3661.0))
            wait_for(lambda: sum(made.manager.rejected_messages.values()) == 2)
            assert made.manager.rejected_messages == {
                "desired_not_yet_valid": 1,
                "desired_expired": 1,
            }
            taken = made.signed(pipelines, 3, issued_at=now + 59.0)  # within the allowance
            made.offer_desired(taken)
            wait_for(lambda: len(made.link.chunk_topics()) == want.chunks)
            made.offer_desired(taken)  # the broker sends the retained copy again
            made.offer_desired(made.signed(pipelines, 3, issued_at=now))  # another "3"
            wait_for(lambda: made.manager.rejected_messages.get("desired_stale") == 1)
            made.send_chunks(artifact, want)
            wait_for(lambda: made.state() == "v1:serving")
            assert sum(made.manager.rejected_messages.values()) == 3

    def test_the_last_generation_taken_outlives_a_restart(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        with started(tmp_path / "state", keys) as first:
            first.desire(want, 5)
            first.send_chunks(artifact, want)
            wait_for(lambda: first.state() == "v1:serving")
            old = first.signed({PIPELINE: want}, 4)  # signed, fresh, but older
        taken = tmp_path / "state" / "desired.json"
        assert taken.stat().st_mode & 0o777 == 0o600
        with started(tmp_path / "state", keys) as again:
            again.sent = first.sent
            again.desire(want, 5)  # the retained copy again: no replay
            again.offer_desired(old)  # a replay the restart must not let through
            wait_for(lambda: again.manager.rejected_messages == {"desired_stale": 1})

    @pytest.mark.parametrize(
        "damage", ["garbage", "unsigned", "tampered", "another_node", "another_key"]
    )
    def test_an_unusable_last_taken_file_is_ignored_not_obeyed(
        self, tmp_path: Path, keys: tuple[bytes, bytes], damage: str
    ) -> None:
        """Nothing but a document this node took may hold it to a generation."""
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        writer = Node(tmp_path / "writer", keys)
        huge = writer.signed({}, 2**63 - 1)
        stranger = generate_keypair()[0]
        documents = {
            "garbage": b"\x00not json",
            "unsigned": huge.model_copy(update={"signature": None}).to_payload(),
            "tampered": writer.signed({}, 1).model_copy(update={"generation": 2**63 - 1}),
            "another_node": writer.signed({}, 2**63 - 1, node="edge-2").to_payload(),
            "another_key": writer.signed({}, 2**63 - 1, signer=stranger).to_payload(),
        }
        document = documents[damage]
        payload = document if isinstance(document, bytes) else document.to_payload()
        (state_dir / "desired.json").write_bytes(payload)
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        with started(state_dir, keys) as made:
            made.desire(want, 1)
            made.send_chunks(artifact, want)
            wait_for(lambda: made.state() == "v1:serving")
            assert made.manager.rejected_messages == {}

    def test_another_model_or_an_unknown_pipeline_in_the_desired_state_is_refused(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v1:serving")
        # Signed by the tenant, but of another model: not what this pipeline runs.
        other = build_model(tmp_path / "billing.onnx", favour=2)
        foreign = desired_for(other, keys[0], model="billing-model", version="v9")
        node.desire(foreign, generation=2)
        wait_for(lambda: node.manager.rejected_messages.get("desired_wrong_model") == 1)
        node.offer_desired(node.signed({"not-here": want}, 3))
        wait_for(lambda: node.manager.rejected_messages.get("desired_unknown_pipeline") == 1)
        assert node.state() == "v1:serving"

    def test_a_chunk_of_the_wrong_size_is_ignored_and_counted(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        wait_for(lambda: node.link.chunk_topics())
        node.manager.offer(topics.artifact_chunk(TENANT, "inspector", "v1", 0), b"short")
        wait_for(lambda: node.manager.rejected_messages.get("bad_chunk") == 1)
        node.send_chunks(artifact, want)
        wait_for(lambda: node.state() == "v1:serving")


class TestTruncatedTransfers:
    def test_a_retained_chunk_of_the_wrong_size_rejects_the_version(
        self, tmp_path: Path, keys: tuple[bytes, bytes], node: Node
    ) -> None:
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        node.desire(want)
        wait_for(lambda: node.link.chunk_topics())
        node.send_chunks(artifact, want, cut=want.chunks - 1, retained=True)
        wait_for(lambda: node.state() == "v1:rejected")
        assert (node.reports[-1].pipelines[PIPELINE].error or "").startswith("truncated_transfer")
        assert node.manager.rejected_messages == {"bad_chunk": 1}
        assert node.models == []
        assert node.link.chunk_topics() == []

    def test_chunks_missing_after_the_manifest_and_a_second_ask_reject_the_version(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        with started(tmp_path / "state", keys, stall_s=0.1, stall_limit=2) as made:
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, keys[0], model="inspector", version="v1")
            made.desire(want)
            wait_for(lambda: made.link.chunk_topics())
            made.send_chunks(artifact, want, only=range(want.chunks - 1))
            made.send_manifest(want)
            wait_for(lambda: made.state() == "v1:rejected")
        error = made.reports[-1].pipelines[PIPELINE].error or ""
        assert error.startswith("truncated_transfer: 1 of")
        last = topics.artifact_chunk(TENANT, "inspector", "v1", want.chunks - 1)
        assert made.link.resubscribed.count(last) == 1  # asked once more before giving up
        assert made.models == []

    def test_missing_chunks_are_waited_for_while_offline_or_without_a_manifest(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        online = threading.Event()
        offline = Node(tmp_path / "a", keys, stall_s=0.1, stall_limit=1, is_connected=online.is_set)
        no_manifest = Node(tmp_path / "b", keys, stall_s=0.1, stall_limit=1)
        artifact = build_model(tmp_path / "v1.onnx")
        want = desired_for(artifact, keys[0], model="inspector", version="v1")
        try:
            for made in (offline, no_manifest):
                made.manager.start()
                made.desire(want)
                wait_for(lambda m=made: m.link.chunk_topics())  # type: ignore[misc]
                made.send_chunks(artifact, want, only=range(want.chunks - 1))
            offline.send_manifest(want)
            time.sleep(1.2)  # a few stall periods: offline, or the upload is not finished
            assert offline.state() == no_manifest.state() == "v1:fetching"
            manifest = topics.artifact_manifest(TENANT, "inspector", "v1")
            assert manifest in no_manifest.link.resubscribed  # asked for it again
            online.set()
            wait_for(lambda: offline.state() == "v1:rejected")
            offline.send_chunks(artifact, want, only=[want.chunks - 1])
            no_manifest.send_chunks(artifact, want, only=[want.chunks - 1])
            wait_for(lambda: no_manifest.state() == "v1:serving")
        finally:
            offline.close()
            no_manifest.close()


def _hostile_model(path: Path, kind: str) -> Path:
    """Write a valid ONNX classifier of the pipeline's input that misbehaves on real frames."""
    weights = np.full((64, 4), 0.1, dtype=np.float32)
    if kind == "nan_on_real_frames":
        nodes = [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Neg", ["flat"], ["neg"]),
            helper.make_node("Sqrt", ["neg"], ["root"]),  # NaN for any positive pixel
            helper.make_node("MatMul", ["root", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ]
        extra: list[onnx.TensorProto] = []
    else:
        nodes = [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("ReduceSum", ["flat", "axis"], ["summed"], keepdims=1),
            helper.make_node("MatMul", ["summed", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ]
        extra = [numpy_helper.from_array(np.array([0], dtype=np.int64), "axis")]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 4])],
        initializer=[numpy_helper.from_array(weights, "W"), *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
