"""The last desired state taken, kept on disk: ``desired.json`` in the state dir.

A node compares each desired state's generation with the last one it took, so an old but
validly signed one replayed to it is refused.  Kept in memory only, that comparison would
start over at every restart: a replay within the old document's validity would then be
taken again.  The cloud's generations rise with its clock (``cloud_head.desired_state``),
so a book started afresh there does not fall below what a node remembers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from continuum import signing
from continuum._fs import OWNER_ONLY, atomic_write
from continuum.errors import ArtifactError, ProtocolError
from continuum.wire.messages import DesiredState

log = logging.getLogger(__name__)

#: File name of the last desired state taken, in the state dir.
TAKEN = "desired.json"


def load_taken(
    state_dir: Path, public_key_pem: bytes, tenant: str, node: str
) -> DesiredState | None:
    """Return the last desired state this node took, or None (none yet, or unusable).

    It is checked as when it was taken (signature, tenant, node): a file edited on the
    box, or left by another node's agent, must not set the generation others are held to.
    An unusable file is logged and ignored, as if the node had taken none yet.
    """
    path = state_dir / TAKEN
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the last desired state taken (%s): %s; starting afresh", path, exc)
        return None
    try:
        state = DesiredState.from_payload(payload)
        if state.signature is None:
            raise ArtifactError("it is not signed")
        signing.verify_desired(public_key_pem, state.model_dump(mode="json"), state.signature)
    except (ProtocolError, ArtifactError) as exc:
        log.warning("ignoring the last desired state taken (%s): %s", path, exc)
        return None
    if (state.tenant, state.node) != (tenant, node):
        log.warning(
            "ignoring the last desired state taken (%s): it is node %r of tenant %r",
            path,
            state.node,
            state.tenant,
        )
        return None
    return state


def save_taken(state_dir: Path, payload: bytes) -> None:
    """Keep ``payload`` as the last desired state taken (atomically, durably).

    A failure is logged, not raised: the node then holds the generation in memory only.
    """
    try:
        atomic_write(state_dir / TAKEN, payload, mode=OWNER_ONLY)
    except OSError as exc:
        log.warning("cannot keep the last desired state taken in %s: %s", state_dir, exc)
