"""The saved-model pointer: ``models/<pipeline>/current.json`` names the verified artifact a
pipeline serves, so a restarted node serves it again (after verifying it once more)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from continuum._fs import atomic_write

POINTER = "current.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedModel:
    """What the pointer records: the model, its version, digest and signature, and the
    artifact's file name beside the pointer."""

    model: str
    version: str
    sha256: str
    signature: str
    file: str


def save_pointer(folder: Path, saved: SavedModel) -> None:
    """Point ``folder``'s pipeline at ``saved``, atomically and durably."""
    record = {
        "model": saved.model,
        "version": saved.version,
        "sha256": saved.sha256,
        "signature": saved.signature,
        "file": saved.file,
    }
    atomic_write(folder / POINTER, json.dumps(record))


def read_pointer(folder: Path) -> SavedModel | None:
    """Return what ``folder``'s pointer records; None when there is no pointer.

    Raises:
        OSError, ValueError, KeyError, TypeError: the pointer cannot be read or is malformed.
    """
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    saved = json.loads(pointer.read_text(encoding="utf-8"))
    return SavedModel(
        model=saved["model"],
        version=saved["version"],
        sha256=saved["sha256"],
        signature=saved["signature"],
        file=str(saved["file"]),
    )
