"""Writing files safely: atomically, with owner-only modes from the first byte.

One home for what the registry, the tenant store, model cards, certificates, TensorRT engine
caches and the edge's model manager all need: a reader (or a crash) sees the old file or the
whole new one, never half of it, and a key or a password file is never readable by others,
not even between its creation and a later ``chmod``.

The cloud head's state (samples, audit logs, registries, keys) is owner-only: files
``OWNER_ONLY`` (0600), folders ``OWNER_ONLY_DIR`` (0700). Modes are given at each creation
rather than by narrowing the umask, because the umask is one setting of the whole process:
changing it from one thread (an actor's) would race every other thread's files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = [
    "OWNER_ONLY",
    "OWNER_ONLY_DIR",
    "atomic_write",
    "fsync_dir",
    "private_dir",
    "private_file",
]

#: The mode of secrets: keys, passwords, salts, configs that hold a credential; and of every
#: file of the cloud head's state (samples, audit logs, registries).
OWNER_ONLY = 0o600
#: The mode of the folders that hold them: only the owner may list or enter them.
OWNER_ONLY_DIR = 0o700


def atomic_write(
    path: str | Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one step; the file is created with ``mode``.

    Args:
        path: the file to write (its folder must exist).
        data: the contents; text is written as UTF-8.
        mode: the file's permission bits from its creation on (``OWNER_ONLY`` for secrets).
        durable: fsync the file before the rename and the folder after it, so the new
            contents survive a power cut once this returns; without it a crash may leave
            the old file (never a torn one).
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or creation in ``folder`` durable (a no-op where folders cannot sync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def private_dir(path: str | Path) -> Path:
    """Create folder ``path`` and any missing parent owner-only (0700); return it.

    Folders that already exist keep their mode: an operator may have shared a parent on
    purpose (a group-readable mount point), and only what this creates is this code's to set.
    """
    target = Path(path)
    missing: list[Path] = []
    folder = target
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=OWNER_ONLY_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another process made it first: its mode is its creator's
        os.chmod(folder, OWNER_ONLY_DIR)  # mkdir's mode passes through the umask
    return target


def private_file(path: str | Path) -> Path:
    """Create an empty owner-only (0600) file at ``path`` unless one exists; return it.

    For files another library creates with its own default mode, a SQLite database above
    all: made here first, SQLite opens it as it is, and gives its ``-wal`` and ``-shm``
    files the database file's mode.
    """
    target = Path(path)
    with contextlib.suppress(FileExistsError):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
        os.fchmod(fd, OWNER_ONLY)  # the umask may not narrow it further either
        os.close(fd)
    return target
