"""One running agent per state directory, and a way for others to see that one runs.

Two agents on one state directory would share one outbox and one node identity: the
broker binds the client id to the identity, so each would take the other's session over,
again and again, and both would send the same samples.  ``StateLock`` holds an exclusive
``flock`` on ``<state_dir>/agent.lock`` while an agent runs; the kernel drops it when the
process dies, even by SIGKILL, so a crash never leaves a stale lock behind.  ``lock_holder``
lets ``edge-agent check`` see a running agent without disturbing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from continuum.errors import ConfigError

LOCK_NAME = "agent.lock"


class StateLock:
    """The exclusive lock of one agent on its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's pid into it.

        Raises:
            ConfigError: another agent (this process or another) holds it.
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(self.path)
            raise ConfigError(
                f"another edge agent{f' (pid {pid})' if pid else ''} runs with state_dir "
                f"{self.path.parent}: one agent per state directory (they would share one "
                "outbox and one broker identity); stop it, or give this one its own state_dir "
                "and node identity"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the pid stays in the file; it means nothing without the lock)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def lock_holder(state_dir: Path) -> int | None:
    """Return the pid of the agent running with ``state_dir`` (0 if unknown), or None."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
