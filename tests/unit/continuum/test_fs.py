"""Atomic, owner-only file writes."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from continuum._fs import OWNER_ONLY, atomic_write, private_dir, private_file


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


class TestPrivateDir:
    def test_every_folder_it_makes_is_owner_only_whatever_the_umask(self, tmp_path: Path) -> None:
        previous = os.umask(0o002)  # a umask that would leave folders group-writable
        try:
            made = private_dir(tmp_path / "state" / "audit" / "acme")
        finally:
            os.umask(previous)
        assert made == tmp_path / "state" / "audit" / "acme"
        for folder in (made, made.parent, made.parent.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    def test_a_folder_that_exists_keeps_its_mode(self, tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o750)
        os.chmod(shared, 0o750)
        private_dir(shared / "mine")
        assert stat.S_IMODE(shared.stat().st_mode) == 0o750
        assert stat.S_IMODE((shared / "mine").stat().st_mode) == 0o700

    def test_a_file_in_the_way_is_an_error(self, tmp_path: Path) -> None:
        (tmp_path / "plain").write_text("x")
        with pytest.raises(OSError):
            private_dir(tmp_path / "plain" / "below")


class TestPrivateFile:
    def test_a_sqlite_database_made_on_it_and_its_wal_are_owner_only(self, tmp_path: Path) -> None:
        path = private_file(tmp_path / "state.sqlite3")
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            names = sorted(p.name for p in tmp_path.iterdir())
            assert names == ["state.sqlite3", "state.sqlite3-shm", "state.sqlite3-wal"]
            for name in names:
                assert stat.S_IMODE((tmp_path / name).stat().st_mode) == OWNER_ONLY, name
        finally:
            db.close()

    def test_an_existing_file_is_left_as_it_is(self, tmp_path: Path) -> None:
        path = tmp_path / "kept"
        path.write_text("contents")
        os.chmod(path, 0o640)
        private_file(path)
        assert path.read_text() == "contents"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
