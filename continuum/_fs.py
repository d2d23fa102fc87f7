"""Writing files safely: atomically, with owner-only modes from the first byte.

One home for what the registry, the tenant store, model cards, certificates, TensorRT engine
caches and the edge's model manager all need: a reader (or a crash) sees the old file or the
whole new one, never half of it, and a key or a password file is never readable by others,
not even between its creation and a later ``chmod``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["OWNER_ONLY", "atomic_write", "fsync_dir"]

#: The mode of secrets: keys, passwords, salts, configs that hold a credential.
OWNER_ONLY = 0o600


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
