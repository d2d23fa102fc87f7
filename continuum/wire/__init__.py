"""The wire protocol both sides speak: MQTT topics, binary sample payloads, JSON control messages.

``topics`` names every topic, ``codec`` lays out the binary payloads and ``messages`` the JSON
ones; all three load with the package (none imports ``continuum.spec``, so nothing cycles).
"""

from __future__ import annotations

from continuum.wire import codec, messages, topics
from continuum.wire.codec import (
    MAX_NDIM,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS,
    FeedbackBatch,
    SampleBatch,
    SampleRecord,
    decode_feedback,
    decode_samples,
    encode_feedback,
    encode_samples,
    sample_id,
)
from continuum.wire.messages import (
    ArtifactManifest,
    DesiredModel,
    DesiredState,
    NodeStatus,
    ReportedModel,
    ReportedState,
    Telemetry,
)

__all__ = [
    "MAX_NDIM",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORDS",
    "ArtifactManifest",
    "DesiredModel",
    "DesiredState",
    "FeedbackBatch",
    "NodeStatus",
    "ReportedModel",
    "ReportedState",
    "SampleBatch",
    "SampleRecord",
    "Telemetry",
    "codec",
    "decode_feedback",
    "decode_samples",
    "encode_feedback",
    "encode_samples",
    "messages",
    "sample_id",
    "topics",
]
