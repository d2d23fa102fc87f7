"""Artifact transfer: retained chunks in the layout the desired state names, the manifest last.

A real registered version (SQLite registry, signed) is published through a function that
keeps what it is given, as ``retained_publisher`` would hand it to the broker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.artifacts import publish_artifact, retract_artifact
from cloud_head.desired_state import desired_model
from cloud_head.registry import ModelVersion
from continuum.errors import ArtifactError
from continuum.signing import artifact_message, verify
from continuum.wire import topics
from continuum.wire.messages import ArtifactManifest
from tests.rollout_kit import CloudRig

TENANT = "acme"
CHUNK = 64 * 1024


class Broker:
    """What a retained publish leaves on a broker: the last payload per topic, in order."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail_at = fail_at

    def __call__(self, topic: str, payload: bytes) -> None:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise TimeoutError("the broker did not acknowledge")
        self.sent.append((topic, payload))

    @property
    def topics(self) -> list[str]:
        return [t for t, _ in self.sent]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT)
    try:
        yield built
    finally:
        built.close()


def version_of(rig: CloudRig, size: int) -> ModelVersion:
    artifact = rig.root / f"model-{size}.onnx"
    artifact.write_bytes(bytes(i % 251 for i in range(size)))
    return rig.register(f"{size}", artifact)


class TestPublish:
    def test_chunks_reassemble_the_artifact_and_the_manifest_goes_last(self, rig: CloudRig) -> None:
        version = version_of(rig, 2 * CHUNK + 1000)
        broker = Broker()

        manifest = publish_artifact(broker, version, chunk_size=CHUNK)

        chunk_topics = [
            topics.artifact_chunk(TENANT, "inspector", version.version, i) for i in range(3)
        ]
        manifest_topic = topics.artifact_manifest(TENANT, "inspector", version.version)
        assert broker.topics == [*chunk_topics, manifest_topic]
        pieces = [payload for _, payload in broker.sent[:3]]
        assert [len(p) for p in pieces] == [CHUNK, CHUNK, 1000]
        data = b"".join(pieces)
        assert data == version.artifact_path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest.sha256 == version.sha256
        assert ArtifactManifest.from_payload(broker.sent[-1][1]) == manifest
        assert (manifest.chunk_size, manifest.chunks, manifest.size_bytes) == (
            CHUNK,
            3,
            2 * CHUNK + 1000,
        )
        verify(
            rig.public_key,
            artifact_message(manifest.model, manifest.version, manifest.sha256),
            manifest.signature,
        )

    @pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK])
    def test_the_desired_state_names_the_layout_the_manifest_has(
        self, rig: CloudRig, size: int
    ) -> None:
        version = version_of(rig, size)
        manifest = publish_artifact(Broker(), version, chunk_size=CHUNK)

        desired = desired_model(version, CHUNK)

        assert (desired.chunk_size, desired.chunks) == (manifest.chunk_size, manifest.chunks)
        assert (desired.sha256, desired.size_bytes, desired.signature) == (
            manifest.sha256,
            manifest.size_bytes,
            manifest.signature,
        )

    def test_a_changed_registry_copy_is_refused_and_nothing_is_published(
        self, rig: CloudRig
    ) -> None:
        version = version_of(rig, 3000)
        version.artifact_path.write_bytes(b"tampered")
        broker = Broker()

        with pytest.raises(ArtifactError, match="re-register the model"):
            publish_artifact(broker, version, chunk_size=CHUNK)

        assert broker.sent == []

    def test_a_publish_that_fails_midway_leaves_no_manifest(self, rig: CloudRig) -> None:
        version = version_of(rig, 3 * CHUNK)
        broker = Broker(fail_at=1)

        with pytest.raises(TimeoutError):
            publish_artifact(broker, version, chunk_size=CHUNK)

        assert broker.topics == [topics.artifact_chunk(TENANT, "inspector", version.version, 0)]


class TestRetract:
    def test_the_manifest_is_cleared_first_then_every_chunk(self, rig: CloudRig) -> None:
        version = version_of(rig, 2 * CHUNK)
        broker = Broker()

        retract_artifact(broker, version, chunks=2)

        assert broker.sent == [
            (topics.artifact_manifest(TENANT, "inspector", version.version), b""),
            (topics.artifact_chunk(TENANT, "inspector", version.version, 0), b""),
            (topics.artifact_chunk(TENANT, "inspector", version.version, 1), b""),
        ]
