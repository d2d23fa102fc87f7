"""Who is who on the broker: one MQTT identity per edge node and per cloud service connection.

The unit of trust is the device (DESIGN.md §6): each edge node connects as itself and its
ACL lets it write only its own data topics and read only its own control topics and its
tenant's model artifacts; only the tenant's cloud roles write desired state, receipts and
artifacts.  The broker binds the client id to the identity (mosquitto's
``use_username_as_clientid``), so one identity is one connection: a service with several
replicas has an identity per replica, and nobody can take over another's session by
connecting with its client id.

An identity is the MQTT username, and the certificate's CN where clients authenticate
with certificates (``use_identity_as_username``).  Every form carries the tenant after an
``@``, which tenant and node names cannot contain (``topics.NAME_PATTERN``), so no name a
tenant picks can spell another tenant's identity, and a role's name before the ``@`` never
starts with ``edge.``, so no node name can spell a service's:

=========================  =============================================================
``edge.{node}@{tenant}``   one edge node (its agent)
``ingest.{i}@{tenant}``    ingest replica ``i`` (reads samples and feedback, writes receipts)
``control@{tenant}``       the tenant's control plane: fleet and rollout (reads status,
                           reported and telemetry; writes desired state and artifacts)
``{tenant}``               the tenant's operator credential (the CLI); reads its tree
=========================  =============================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from continuum.errors import ProtocolError
from continuum.wire import topics

#: How many ingest replicas a tenant may run: each has its own identity, made in advance.
MAX_INGEST_REPLICAS = 8

Role = Literal["edge", "ingest", "control", "operator"]

_EDGE = "edge."
_INGEST = "ingest."
_CONTROL = "control"
_NAME = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"
_FORMS = re.compile(
    rf"^(?:edge\.(?P<node>{_NAME})|ingest\.(?P<replica>[0-7])|(?P<control>control))"
    rf"@(?P<tenant>{_NAME})$"
)


@dataclass(frozen=True, slots=True)
class Identity:
    """One broker identity: its tenant, its role, and the node or replica it stands for."""

    tenant: str
    role: Role
    node: str | None = None
    replica: int | None = None

    @property
    def username(self) -> str:
        """The MQTT username (and certificate CN) of this identity."""
        if self.role == "edge":
            assert self.node is not None
            return node_identity(self.tenant, self.node)
        if self.role == "ingest":
            assert self.replica is not None
            return ingest_identity(self.tenant, self.replica)
        if self.role == "control":
            return control_identity(self.tenant)
        return operator_identity(self.tenant)


def node_identity(tenant: str, node: str) -> str:
    """Return the identity of edge node ``node`` of ``tenant``."""
    topics.check_name(tenant, "tenant")
    topics.check_name(node, "node")
    return f"{_EDGE}{node}@{tenant}"


def ingest_identity(tenant: str, replica: int) -> str:
    """Return the identity of ingest replica ``replica`` (0 to ``MAX_INGEST_REPLICAS`` - 1)."""
    topics.check_name(tenant, "tenant")
    if not 0 <= replica < MAX_INGEST_REPLICAS:
        raise ProtocolError(
            f"ingest replica {replica} is out of range: a tenant has identities for replicas "
            f"0 to {MAX_INGEST_REPLICAS - 1}; run at most {MAX_INGEST_REPLICAS} replicas",
            reason="bad_name",
        )
    return f"{_INGEST}{replica}@{tenant}"


def control_identity(tenant: str) -> str:
    """Return the identity of ``tenant``'s control plane (fleet and rollout)."""
    topics.check_name(tenant, "tenant")
    return f"{_CONTROL}@{tenant}"


def operator_identity(tenant: str) -> str:
    """Return the identity of ``tenant``'s operator credential: the tenant's own name."""
    return topics.check_name(tenant, "tenant")


def parse_identity(username: str) -> Identity:
    """Return the identity ``username`` spells.

    Raises:
        ProtocolError: it is none of the forms in the module docstring.
    """
    if isinstance(username, str) and topics.NAME_PATTERN.fullmatch(username):
        return Identity(tenant=username, role="operator")
    match = _FORMS.fullmatch(username) if isinstance(username, str) else None
    if match is None:
        raise ProtocolError(
            f"{username!r} is not a continuum broker identity: expected edge.NODE@TENANT, "
            "ingest.N@TENANT, control@TENANT or a tenant name",
            reason="bad_name",
        )
    tenant = match["tenant"]
    if match["node"] is not None:
        return Identity(tenant=tenant, role="edge", node=match["node"])
    if match["replica"] is not None:
        return Identity(tenant=tenant, role="ingest", replica=int(match["replica"]))
    return Identity(tenant=tenant, role="control")
