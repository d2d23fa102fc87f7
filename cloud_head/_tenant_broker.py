"""The tenants as the MQTT broker sees them: mosquitto's password file, its ACL, its reload.

Part of ``cloud_head.tenants``: ``TenantRegistry`` decides who exists; ``BrokerFiles`` writes
that down in the two files mosquitto reads (hashes only, never a password) and makes the
running broker read them again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from continuum._fs import atomic_write
from continuum.embedded.broker import find_mosquitto_tool
from continuum.errors import ConfigError, NotReadyError
from continuum.wire import topics

if TYPE_CHECKING:
    from cloud_head.tenants import TenantRecord

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

    def write_acl(self, tenants: Iterable[TenantRecord]) -> None:
        """Rewrite the ACL file for ``tenants``."""
        atomic_write(self.acl_file, acl_text(tenants), mode=_BROKER_FILE_MODE)

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


def acl_text(tenants: Iterable[TenantRecord]) -> str:
    """Return the ACL file for ``tenants`` (mosquitto ``acl_file`` format)."""
    lines = [
        "# Written by cloud_head.tenants from the tenant registry; edits are overwritten.",
        "# Each tenant user reads and writes its own tree only; each ingest user reads",
        "# its tenant's samples and feedback only (also through $share/ingest/...) and",
        "# writes the receipts its nodes' outboxes wait for (nodes/+/stored).",
        "# A user without a block here may connect but can neither read nor write.",
    ]
    for tenant in tenants:
        name = tenant.name
        lines += [
            "",
            f"user {tenant.mqtt_username}",
            f"topic readwrite {topics.tenant_filter(name)}",
            f"user {tenant.ingest_username}",
            f"topic read {topics.pipeline_filter(name, 'samples')}",
            f"topic read {topics.pipeline_filter(name, 'feedback')}",
            f"topic write {topics.nodes_filter(name, 'stored')}",
        ]
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
