"""Model artifact transfer over MQTT: a retained manifest plus retained, digest-checked chunks.

Retained chunks make the transfer resumable without a request channel: an agent that
drops mid-transfer re-subscribes and the broker sends it every chunk again, and a node
that joins later gets the artifact the same way. Retracting clears the retained messages.

Publishing goes through a ``RetainedPublish`` function (``retained_publisher`` makes one of
an MQTT client), the same kind the desired-state book publishes with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_head.settings import DEFAULT_CHUNK_BYTES
from continuum.errors import ArtifactError
from continuum.wire import topics
from continuum.wire.messages import ArtifactManifest, chunk_layout

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from cloud_head.registry import ModelVersion

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "RetainedPublish",
    "publish_artifact",
    "retained_publisher",
    "retract_artifact",
]

#: Delivers ``(topic, payload)`` retained at QoS 1 and returns once the broker has it;
#: raises when it cannot (``NotReadyError``, ``OperationTimeoutError``).
RetainedPublish = Callable[[str, bytes], None]


def retained_publisher(client: mqtt.Client, *, timeout_s: float = 30.0) -> RetainedPublish:
    """Return a ``RetainedPublish`` that sends through ``client`` and waits for the broker."""
    from continuum.wire.mqtt import publish_and_wait

    def publish(topic: str, payload: bytes) -> None:
        publish_and_wait(client, topic, payload, retain=True, timeout_s=timeout_s)

    return publish


def publish_artifact(
    publish: RetainedPublish,
    version: ModelVersion,
    *,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
) -> ArtifactManifest:
    """Publish one registered version's artifact as retained chunks, then its manifest.

    The manifest goes last so an agent that sees it can count on every chunk being there.
    The chunks are laid out by ``chunk_layout`` (as the desired state describes them).

    Raises:
        ArtifactError: the registry's copy of the artifact no longer has its recorded size.
    """
    data = Path(version.artifact_path).read_bytes()
    if len(data) != version.size_bytes:
        raise ArtifactError(
            f"artifact {version.artifact_path} is {len(data)} bytes but the registry recorded "
            f"{version.size_bytes}; the registry's copy was changed: re-register the model"
        )
    chunk_size, chunks = chunk_layout(len(data), chunk_size)
    for index in range(chunks):
        piece = data[index * chunk_size : (index + 1) * chunk_size]
        publish(topics.artifact_chunk(version.tenant, version.model, version.version, index), piece)
    manifest = ArtifactManifest(
        model=version.model,
        version=version.version,
        sha256=version.sha256,
        signature=version.signature,
        size_bytes=len(data),
        chunk_size=chunk_size,
        chunks=chunks,
    )
    publish(
        topics.artifact_manifest(version.tenant, version.model, version.version),
        manifest.to_payload(),
    )
    return manifest


def retract_artifact(publish: RetainedPublish, version: ModelVersion, chunks: int) -> None:
    """Clear a version's retained manifest and chunks from the broker (manifest first).

    An empty retained payload is how MQTT deletes a retained message.
    """
    publish(topics.artifact_manifest(version.tenant, version.model, version.version), b"")
    for index in range(chunks):
        publish(topics.artifact_chunk(version.tenant, version.model, version.version, index), b"")
