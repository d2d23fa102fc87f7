"""The wire protocol both sides speak: MQTT topics, binary sample payloads, JSON control messages.

The codec and message names load on first use: ``continuum.spec`` imports ``wire.topics``
while the codec imports ``spec.DataClass``, so importing them here eagerly would make a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from continuum.wire import topics

if TYPE_CHECKING:
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

_CODEC = (
    "MAX_NDIM",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORDS",
    "FeedbackBatch",
    "SampleBatch",
    "SampleRecord",
    "decode_feedback",
    "decode_samples",
    "encode_feedback",
    "encode_samples",
    "sample_id",
)
_MESSAGES = (
    "ArtifactManifest",
    "DesiredModel",
    "DesiredState",
    "NodeStatus",
    "ReportedModel",
    "ReportedState",
    "Telemetry",
)
_HOMES = {name: "continuum.wire.codec" for name in _CODEC} | {
    name: "continuum.wire.messages" for name in _MESSAGES
}

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
    "decode_feedback",
    "decode_samples",
    "encode_feedback",
    "encode_samples",
    "sample_id",
    "topics",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'continuum.wire' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the lazily loaded public names too."""
    return sorted(set(globals()) | set(__all__))
