"""The MQTT topic scheme of DESIGN.md §5: the only place that spells a topic.

Every topic sits under ``ctm/{tenant}/`` so a broker ACL of ``ctm/{tenant}/#``
isolates a tenant.  Both the edge agent and the cloud head build and parse
topics here; neither writes a topic string of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from continuum.errors import ProtocolError

PREFIX = "ctm"
INGEST_SHARE_GROUP = "ingest"

#: Tenant, node, pipeline and model names appear as single topic levels, so they
#: may not contain MQTT wildcards or separators.
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")

#: A chunk index as artifact_chunk writes it: ASCII decimal without leading zeros.
_CHUNK_INDEX = re.compile(r"0|[1-9][0-9]*")

TopicKind = Literal[
    "status", "reported", "desired", "stored", "samples", "telemetry", "feedback", "artifact"
]


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid topic level name, else raise ``ProtocolError``."""
    if type(value) is str and value in _VALID_NAMES:  # ingest checks the same few names
        return value  # at every message; a valid name stays valid
    # fullmatch, not match: "$" also matches before a trailing newline.
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ProtocolError(
            f"invalid {what} name {value!r}: use 1-64 lowercase letters, digits, '.', '_' "
            "or '-', starting and ending with a letter or digit",
            reason="bad_name",
        )
    if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
        _VALID_NAMES.clear()  # bounded: made-up names cannot grow it without limit
    _VALID_NAMES.add(value)
    return value


#: Names that passed ``check_name`` (any kind: the rule is the same for every kind).
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 4096


def node_status(tenant: str, node: str) -> str:
    """Retained node status (labels, capabilities); the last will marks it offline."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/nodes/{check_name(node, 'node')}/status"


def node_reported(tenant: str, node: str) -> str:
    """Retained reported state: models loaded per pipeline, health."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/nodes/{check_name(node, 'node')}/reported"


def node_desired(tenant: str, node: str) -> str:
    """Retained desired state: model version per pipeline, digest, signature."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/nodes/{check_name(node, 'node')}/desired"


def node_stored(tenant: str, node: str) -> str:
    """Receipts from ingest: which of the node's samples are durably stored (or refused for
    good) and which of its delayed labels are recorded, so that its outbox may forget them."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/nodes/{check_name(node, 'node')}/stored"


def _pipeline_topic(tenant: str, pipeline: str, kind: str, node: str) -> str:
    return (
        f"{PREFIX}/{check_name(tenant, 'tenant')}/pipelines/{check_name(pipeline, 'pipeline')}"
        f"/{kind}/{check_name(node, 'node')}"
    )


def samples(tenant: str, pipeline: str, node: str) -> str:
    """Selected samples of one node, batched (binary codec)."""
    return _pipeline_topic(tenant, pipeline, "samples", node)


def telemetry(tenant: str, pipeline: str, node: str) -> str:
    """Windowed metrics of one node for one pipeline."""
    return _pipeline_topic(tenant, pipeline, "telemetry", node)


def feedback(tenant: str, pipeline: str, node: str) -> str:
    """Delayed ground-truth labels from the edge, joined to samples by sample id."""
    return _pipeline_topic(tenant, pipeline, "feedback", node)


def artifact_prefix(tenant: str, model: str, version: str) -> str:
    """Root of one model version's artifact transfer (manifest and chunks)."""
    return (
        f"{PREFIX}/{check_name(tenant, 'tenant')}/models/{check_name(model, 'model')}"
        f"/{check_name(version, 'version')}"
    )


def artifact_manifest(tenant: str, model: str, version: str) -> str:
    """Retained manifest of one artifact: size, chunk count, digest, signature."""
    return f"{artifact_prefix(tenant, model, version)}/manifest"


def artifact_chunk(tenant: str, model: str, version: str, index: int) -> str:
    """Retained chunk ``index`` of one artifact; a re-subscribe resends what was missed."""
    if index < 0:
        raise ProtocolError(f"chunk index must be >= 0, got {index}", reason="bad_topic")
    return f"{artifact_prefix(tenant, model, version)}/chunks/{index}"


def pipeline_filter(
    tenant: str, kind: Literal["samples", "telemetry", "feedback"], node: str | None = None
) -> str:
    """Filter for one kind of pipeline topic of every pipeline and node (or of ``node`` only)."""
    last = "+" if node is None else check_name(node, "node")
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/pipelines/+/{kind}/{last}"


def models_filter(tenant: str) -> str:
    """Filter for every model artifact (manifests and chunks) of one tenant."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/models/#"


def nodes_filter(tenant: str, kind: Literal["status", "reported", "desired", "stored"]) -> str:
    """Subscription filter for one kind of node topic of every node of a tenant."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/nodes/+/{kind}"


def tenant_filter(tenant: str) -> str:
    """Subscription filter for everything of one tenant (the ACL scope)."""
    return f"{PREFIX}/{check_name(tenant, 'tenant')}/#"


def shared(filter_: str, group: str = INGEST_SHARE_GROUP) -> str:
    """Wrap a filter as an MQTT 5 shared subscription so ingest scales out."""
    return f"$share/{group}/{filter_}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic taken apart; fields that do not apply to its kind are empty strings."""

    tenant: str
    kind: TopicKind
    node: str = ""
    pipeline: str = ""
    model: str = ""
    version: str = ""
    chunk: int = -1


_NODE_KINDS = ("status", "reported", "desired", "stored")


def parse(topic: str) -> ParsedTopic:
    """Take a continuum topic apart; raise ``ProtocolError`` for anything else."""
    if type(topic) is str:  # ingest parses the same few topics at every message
        known = _PARSED.get(topic)
        if known is not None:
            return known
    parsed = _parse(topic)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()  # bounded: made-up topics cannot grow it without limit
    _PARSED[topic] = parsed
    return parsed


#: Topics ``parse`` took apart (a ``ParsedTopic`` is immutable, and a topic's parts never
#: change): what the next ``parse`` of the same topic returns.
_PARSED: dict[str, ParsedTopic] = {}
_PARSED_MAX = 4096


def _parse(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    try:
        if len(parts) < 4 or parts[0] != PREFIX:
            raise ValueError
        tenant = check_name(parts[1], "tenant")
        section = parts[2]
        if section == "nodes" and len(parts) == 5 and parts[4] in _NODE_KINDS:
            kind: TopicKind = parts[4]  # type: ignore[assignment]
            return ParsedTopic(tenant, kind, node=check_name(parts[3], "node"))
        if (
            section == "pipelines"
            and len(parts) == 6
            and parts[4] in ("samples", "telemetry", "feedback")
        ):
            kind = parts[4]  # type: ignore[assignment]
            return ParsedTopic(
                tenant,
                kind,
                pipeline=check_name(parts[3], "pipeline"),
                node=check_name(parts[5], "node"),
            )
        if section == "models" and len(parts) >= 6:
            model = check_name(parts[3], "model")
            version = check_name(parts[4], "version")
            if len(parts) == 6 and parts[5] == "manifest":
                return ParsedTopic(tenant, "artifact", model=model, version=version)
            if len(parts) == 7 and parts[5] == "chunks" and _CHUNK_INDEX.fullmatch(parts[6]):
                return ParsedTopic(
                    tenant, "artifact", model=model, version=version, chunk=int(parts[6])
                )
    except ProtocolError:
        raise
    except ValueError:
        pass
    raise ProtocolError(f"not a continuum topic: {topic!r}", reason="bad_topic")
