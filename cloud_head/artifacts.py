"""Model artifact transfer over MQTT: a retained manifest plus retained, digest-checked chunks.

Retained chunks make the transfer resumable without a request channel: an agent that
drops mid-transfer re-subscribes and the broker sends it every chunk again, and a node
that joins later gets the artifact the same way. Retracting clears the retained messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from continuum.errors import ArtifactError
from continuum.wire import topics
from continuum.wire.messages import ArtifactManifest, chunk_layout
from continuum.wire.mqtt import publish_and_wait

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from cloud_head.registry import ModelVersion

#: 64 KiB chunks keep every message far below broker limits and lose little on a drop.
DEFAULT_CHUNK_BYTES = 64 * 1024


def publish_artifact(
    client: mqtt.Client,
    version: ModelVersion,
    *,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    timeout_s: float = 30.0,
) -> ArtifactManifest:
    """Publish one registered version's artifact as retained chunks, then its manifest.

    The manifest goes last so an agent that sees it can count on every chunk being there.
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
        publish_and_wait(
            client,
            topics.artifact_chunk(version.tenant, version.model, version.version, index),
            piece,
            retain=True,
            timeout_s=timeout_s,
        )
    manifest = ArtifactManifest(
        model=version.model,
        version=version.version,
        sha256=version.sha256,
        signature=version.signature,
        size_bytes=len(data),
        chunk_size=chunk_size,
        chunks=chunks,
    )
    publish_and_wait(
        client,
        topics.artifact_manifest(version.tenant, version.model, version.version),
        manifest.to_payload(),
        retain=True,
        timeout_s=timeout_s,
    )
    return manifest


def retract_artifact(
    client: mqtt.Client, version: ModelVersion, chunks: int, *, timeout_s: float = 30.0
) -> None:
    """Clear a version's retained manifest and chunks from the broker (manifest first)."""
    publish_and_wait(
        client,
        topics.artifact_manifest(version.tenant, version.model, version.version),
        b"",
        retain=True,
        timeout_s=timeout_s,
    )
    for index in range(chunks):
        publish_and_wait(
            client,
            topics.artifact_chunk(version.tenant, version.model, version.version, index),
            b"",
            retain=True,
            timeout_s=timeout_s,
        )
