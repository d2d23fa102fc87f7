"""Atomic, owner-only file writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from continuum._fs import OWNER_ONLY, atomic_write


class TestAtomicWrite:
    def test_a_file_is_replaced_whole_with_its_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "key.pem"
        path.write_text("old")
        atomic_write(path, b"new secret", mode=OWNER_ONLY)
        assert path.read_bytes() == b"new secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_text_is_written_as_utf8(self, tmp_path: Path) -> None:
        atomic_write(tmp_path / "card.md", "Modellkarte für v2", durable=False)
        assert (tmp_path / "card.md").read_bytes() == "Modellkarte für v2".encode()

    def test_a_failed_replace_leaves_the_old_contents_and_no_temporary(
        self, tmp_path: Path
    ) -> None:
        target = tmp_path / "models"  # a folder in the way: the rename fails
        target.mkdir()
        (target / "v1.onnx").write_text("old")
        with pytest.raises(OSError):
            atomic_write(target, b"new")
        assert (target / "v1.onnx").read_text() == "old"
        assert os.listdir(tmp_path) == ["models"]
