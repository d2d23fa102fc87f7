"""What the fleet registry answers: what it did with a message, and what it knows of a node.

Public through ``cloud_head.fleet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from continuum.wire.messages import NodeStatus, ReportedModel, ReportedState, Telemetry

UpdateKind = Literal["status", "reported", "telemetry", "cleared", "rejected"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetUpdate:
    """What the registry did with one message.

    ``cleared``: an empty status or reported message about a node the registry does not
    know (e.g. ``continuum fleet remove`` clearing the retained topics of the node it
    removed): nothing to keep, nothing done.  The same about a known node is ``rejected``
    (``empty_status``, ``empty_reported``) and the node is kept as it was.
    """

    kind: UpdateKind
    node: str = ""
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Everything known about one node.

    ``status`` is None until the node published its status (then it has no labels and counts
    as offline); ``last_seen`` is the cloud time of the node's last message of any kind;
    ``refused`` says why the node was not admitted (over the ``edge_nodes`` quota), else None.
    """

    node: str
    status: NodeStatus | None
    reported: ReportedState | None
    last_seen: float
    telemetry: dict[str, Telemetry] = field(default_factory=dict)
    refused: str | None = None

    @property
    def online(self) -> bool:
        """Whether the node's last status said it is online."""
        return self.status is not None and self.status.online

    @property
    def labels(self) -> dict[str, str]:
        """The node's labels (empty until its status arrived)."""
        return dict(self.status.labels) if self.status is not None else {}

    @property
    def pipelines(self) -> list[str]:
        """The pipelines the node's status says it runs (empty until its status arrived)."""
        return list(self.status.pipelines) if self.status is not None else []

    def model(self, pipeline: str) -> ReportedModel | None:
        """Return the model the node reports for ``pipeline``, if any."""
        return None if self.reported is None else self.reported.pipelines.get(pipeline)


def node_info(row: tuple[Any, ...], telemetry: dict[str, Telemetry]) -> NodeInfo:
    """Return the ``NodeInfo`` of a stored node row and its newest telemetry per pipeline."""
    node, status_json, reported_json, last_seen, refused = row
    return NodeInfo(
        node=node,
        status=None if status_json is None else NodeStatus.model_validate_json(status_json),
        reported=None
        if reported_json is None
        else ReportedState.model_validate_json(reported_json),
        last_seen=float(last_seen),
        telemetry=telemetry,
        refused=refused,
    )
