"""The tenants as the MQTT broker sees them: mosquitto's password file, its ACL, its reload.

Part of ``cloud_head.tenants``: ``TenantRegistry`` decides who exists; ``BrokerFiles`` writes
that down in the two files mosquitto reads (hashes only, never a password) and makes the
running broker read them again.  The ACL has one block per identity
(``continuum.wire.identities``), each granting what that identity's role needs and nothing
else; ``acl_text`` is the one source of it, and ``deploy/mosquitto/acl.example`` is its
output for an example tenant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from continuum._fs import atomic_write
from continuum.embedded.broker import find_mosquitto_tool
from continuum.errors import ConfigError, NotReadyError
from continuum.wire import identities, topics

if TYPE_CHECKING:
    from cloud_head._tenant_identities import NodeRecord

#: Where Debian's mosquitto package puts the tool; used when it is not on PATH.
DEFAULT_MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
_SUBPROCESS_TIMEOUT_S = 10.0
#: The broker files' mode: the broker's group may read them, nobody else (they hold hashes).
_BROKER_FILE_MODE = 0o640


class BrokerFiles:
    """The mosquitto password and ACL files of the registry, kept in line with its tenants.

    Args:
        password_file: mosquitto's ``password_file``.
        acl_file: mosquitto's ``acl_file``.
        mosquitto_passwd: the ``mosquitto_passwd`` tool (default: found on PATH, then
            ``DEFAULT_MOSQUITTO_PASSWD``).
    """

    def __init__(
        self, password_file: Path, acl_file: Path, *, mosquitto_passwd: str | None = None
    ) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self._mosquitto_passwd = mosquitto_passwd

    def create_missing(self) -> None:
        """Create both files empty where they do not exist yet."""
        for path in (self.password_file, self.acl_file):
            if not path.exists():
                atomic_write(path, b"", mode=_BROKER_FILE_MODE)

    def users(self) -> list[str]:
        """Return the users of the password file, in its order."""
        return list(self._hashes())

    def matches(self, user: str, password: str) -> bool:
        """Return whether ``password`` is ``user``'s in the password file (False if absent)."""
        stored = self._hashes().get(user)
        return stored is not None and password_matches(stored, password)

    def hash_of(self, user: str) -> str | None:
        """Return ``user``'s password hash as the file holds it, or None if it has none."""
        return self._hashes().get(user)

    def set_hashes(self, hashes: Mapping[str, str]) -> None:
        """Give each user of ``hashes`` that hash (added or replaced), keeping the others.

        For identities that share one secret (a service's replicas): the hash
        ``mosquitto_passwd`` made for one of them is copied to the rest.
        """
        for user, hashed in hashes.items():
            if ":" in user or "\n" in user + hashed or not hashed:
                raise ConfigError(f"not a password-file entry for {user!r}")
        kept = [(u, h) for u, h in self._hashes().items() if u not in hashes]
        lines = [f"{u}:{h}" for u, h in [*kept, *hashes.items()]]
        atomic_write(
            self.password_file, "".join(line + "\n" for line in lines), mode=_BROKER_FILE_MODE
        )

    def set_password(self, user: str, password: str) -> None:
        """Add ``user`` with ``password`` (as mosquitto's hash), or change its password."""
        # -b puts the password on mosquitto_passwd's command line for a moment; only
        # local users who can list processes could see it there.
        self._run_passwd(["-b", str(self.password_file), user, password], what=f"set {user}")

    def remove(self, users: Iterable[str]) -> None:
        """Remove ``users`` from the password file (those absent are skipped)."""
        present = set(self.users())
        for user in users:
            if user in present:
                self._run_passwd(["-D", str(self.password_file), user], what=f"remove {user}")

    def write_acl(self, tenants: Iterable[str], nodes: Iterable[NodeRecord]) -> None:
        """Rewrite the ACL file for ``tenants`` and their enrolled ``nodes``."""
        atomic_write(self.acl_file, acl_text(tenants, nodes), mode=_BROKER_FILE_MODE)

    def _hashes(self) -> dict[str, str]:
        text = self.password_file.read_text() if self.password_file.exists() else ""
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _run_passwd(self, args: list[str], *, what: str) -> None:
        tool = find_mosquitto_tool(
            "mosquitto_passwd", DEFAULT_MOSQUITTO_PASSWD, self._mosquitto_passwd
        )
        try:
            done = subprocess.run(
                [tool, *args],
                capture_output=True,
                text=True,
                timeout=_SUBPROCESS_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise NotReadyError(f"mosquitto_passwd did not {what} within 10 s") from error
        if done.returncode != 0:
            raise NotReadyError(
                f"mosquitto_passwd could not {what} in {self.password_file} "
                f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
            )
        os.chmod(self.password_file, _BROKER_FILE_MODE)


_ACL_HEADER = """\
# Written by cloud_head.tenants from the tenant registry; edits are overwritten.
# One block per broker identity (continuum.wire.identities): the unit of trust is the
# device, so each identity may act only as itself (DESIGN.md section 6, invariant 6).
#   TENANT              the operator's credential (the CLI): reads its tenant's tree, writes
#                       nothing (changes go through the cloud services).
#   control@TENANT      fleet and rollout: reads status, reported and telemetry; writes
#                       desired state and model artifacts, and clears a removed node's
#                       retained status and reported state.
#   ingest.N@TENANT     ingest replica N: reads samples and feedback (through
#                       $share/ingest/..., checked against the plain topic); writes receipts.
#   edge.NODE@TENANT    an enrolled edge node: writes only its own status, reported,
#                       samples, telemetry and feedback; reads only its own desired state and
#                       receipts, and its tenant's model artifacts.
# mosquitto's acl_file accepts every SUBSCRIBE and checks "read" on each message it
# delivers, so a filter outside a block (another node's desired, ctm/#) delivers nothing.
# An identity without a block (revoked, unknown, a certificate nobody enrolled) may
# connect but can neither read nor write; the broker binds each connection's client id to
# its identity (use_username_as_clientid), so nobody can take over another's session."""


def acl_blocks(tenant: str, nodes: Iterable[str]) -> dict[str, list[str]]:
    """Return ``tenant``'s ACL: each identity and its ``topic`` lines, in file order."""
    status = topics.nodes_filter(tenant, "status")
    reported = topics.nodes_filter(tenant, "reported")
    blocks = {
        identities.operator_identity(tenant): [f"topic read {topics.tenant_filter(tenant)}"],
        identities.control_identity(tenant): [
            f"topic readwrite {status}",
            f"topic readwrite {reported}",
            f"topic read {topics.pipeline_filter(tenant, 'telemetry')}",
            f"topic write {topics.nodes_filter(tenant, 'desired')}",
            f"topic write {topics.models_filter(tenant)}",
        ],
    }
    ingest = [
        f"topic read {topics.pipeline_filter(tenant, 'samples')}",
        f"topic read {topics.pipeline_filter(tenant, 'feedback')}",
        f"topic write {topics.nodes_filter(tenant, 'stored')}",
    ]
    for replica in range(identities.MAX_INGEST_REPLICAS):
        blocks[identities.ingest_identity(tenant, replica)] = list(ingest)
    for node in nodes:
        blocks[identities.node_identity(tenant, node)] = [
            f"topic write {topics.node_status(tenant, node)}",
            f"topic write {topics.node_reported(tenant, node)}",
            f"topic write {topics.pipeline_filter(tenant, 'samples', node)}",
            f"topic write {topics.pipeline_filter(tenant, 'telemetry', node)}",
            f"topic write {topics.pipeline_filter(tenant, 'feedback', node)}",
            f"topic read {topics.node_desired(tenant, node)}",
            f"topic read {topics.node_stored(tenant, node)}",
            f"topic read {topics.models_filter(tenant)}",
        ]
    return blocks


def acl_text(tenants: Iterable[str], nodes: Iterable[NodeRecord] = ()) -> str:
    """Return the ACL file (mosquitto ``acl_file`` format) for ``tenants`` and their nodes.

    Only the enrolments in force among ``nodes`` get a block; the others are ignored.
    """
    by_tenant: dict[str, list[str]] = {}
    for record in nodes:
        if record.active:
            by_tenant.setdefault(record.tenant, []).append(record.node)
    lines = [_ACL_HEADER]
    for tenant in tenants:
        for user, rules in acl_blocks(tenant, by_tenant.get(tenant, [])).items():
            lines += ["", f"user {user}", *rules]
    return "\n".join(lines) + "\n"


def reload_broker(pid: int | None, pid_file: Path | None) -> int | None:
    """Send the broker (``pid``, else the one in ``pid_file``) a SIGHUP; return the pid.

    Returns None when neither is given.

    Raises:
        NotReadyError: the pid file or the process does not exist.
        ConfigError: the pid file does not hold a pid.
    """
    if pid is None and pid_file is not None:
        pid = _read_pid(pid_file)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as error:
        raise NotReadyError(
            f"no broker process with pid {pid} to reload; the files are written, start "
            "the broker or pass its current pid"
        ) from error
    return pid


def password_matches(stored: str, password: str) -> bool:
    """Check ``password`` against a mosquitto password-file hash (``$7$`` or ``$6$``)."""
    parts = stored.strip().split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":  # $7$iterations$salt$hash: PBKDF2-SHA512
            salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(digest))
        elif len(parts) == 4 and parts[1] == "6":  # $6$salt$hash: SHA-512 of password + salt
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, digest)


def _read_pid(pid_file: Path) -> int:
    try:
        return int(Path(pid_file).read_text().strip())
    except FileNotFoundError as error:
        raise NotReadyError(f"broker pid file {pid_file} does not exist: is it running?") from error
    except ValueError as error:
        raise ConfigError(f"broker pid file {pid_file} does not hold a pid") from error
