"""The seen index: which samples ingest stored, as runs of consecutive seqs per node."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cloud_head.seen import MAX_SEQ, SeenIndex, parse_sample_id, seq_runs
from continuum.errors import ProtocolError


def seqs(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@pytest.fixture
def index(tmp_path: Path) -> SeenIndex:
    return SeenIndex(tmp_path / "seen.sqlite3")


def run_rows(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT first_seq, last_seq FROM seen_runs ORDER BY 1").fetchall()


class TestRuns:
    def test_consecutive_seqs_are_one_run(self, tmp_path: Path, index: SeenIndex) -> None:
        index.record("acme", {("p", "cam-1"): np.arange(100, 1100, dtype=np.int64)}, 1)
        assert run_rows(tmp_path / "seen.sqlite3") == [(100, 1099)]

    def test_gaps_split_runs(self, tmp_path: Path, index: SeenIndex) -> None:
        index.record("acme", {("p", "cam-1"): seqs(5, 1, 2, 3, 9)}, 1)
        assert run_rows(tmp_path / "seen.sqlite3") == [(1, 3), (5, 5), (9, 9)]

    def test_exactly_the_recorded_seqs_are_stored(self, index: SeenIndex) -> None:
        rng = np.random.default_rng(3)
        recorded = np.unique(rng.integers(0, 50_000, 5_000)).astype(np.int64)
        index.record("acme", {("p", "cam-1"): recorded}, 1)
        asked = np.arange(-5, 50_010, dtype=np.int64)
        mask = index.stored("acme", ("p", "cam-1"), asked)
        assert np.array_equal(asked[mask], recorded)

    def test_far_apart_seqs_are_looked_up_in_clusters(self, index: SeenIndex) -> None:
        index.record("acme", {("p", "cam-1"): seqs(10, 11, 10**12, 10**15)}, 1)
        asked = seqs(9, 10, 11, 12, 10**12, 10**12 + 1, 10**15, 2**63 - 1)
        mask = index.stored("acme", ("p", "cam-1"), asked)
        assert mask.tolist() == [False, True, True, False, True, False, True, False]

    def test_runs_belong_to_one_tenant_pipeline_and_node(self, index: SeenIndex) -> None:
        index.record("acme", {("p", "cam-1"): seqs(1, 2, 3)}, 1)
        assert not index.stored("acme", ("q", "cam-1"), seqs(2)).any()
        assert not index.stored("acme", ("p", "cam-2"), seqs(2)).any()
        assert not index.stored("medica", ("p", "cam-1"), seqs(2)).any()
        assert index.contains("acme", "p", "cam-1:2")

    def test_interleaved_pipelines_of_one_node_keep_their_own_seqs(self, index: SeenIndex) -> None:
        # One node's outbox numbers the samples of all its pipelines in one sequence.
        index.record("acme", {("a", "n"): seqs(1, 3, 5), ("b", "n"): seqs(2, 4, 6)}, 1)
        assert index.stored("acme", ("a", "n"), seqs(1, 2, 3, 4)).tolist() == [
            True,
            False,
            True,
            False,
        ]

    def test_seqs_read_back_from_a_file_add_only_what_is_missing(
        self, tmp_path: Path, index: SeenIndex
    ) -> None:
        index.record("acme", {("p", "n"): np.arange(0, 4, dtype=np.int64)}, 1)
        # A merged file holding recorded seqs 0..3 and unrecorded 4..7.
        index.record("acme", {("p", "n"): np.arange(0, 8, dtype=np.int64)}, 2, known_new=False)
        assert index.stored("acme", ("p", "n"), np.arange(0, 9, dtype=np.int64)).sum() == 8
        assert run_rows(tmp_path / "seen.sqlite3") == [(0, 3), (4, 7)]

    def test_a_compaction_of_recorded_files_is_recorded(self, index: SeenIndex) -> None:
        index.record("acme", {}, 1, paths=["a", "b"])
        assert index.replace_files(["a", "b"], "ab")
        assert index.recorded_files() == {"ab"}
        assert not index.replace_files(["ab", "c"], "abc")  # "c" was never recorded
        assert index.recorded_files() == {"ab"}

    def test_count_since_and_prune(self, index: SeenIndex) -> None:
        index.record("acme", {("p", "n"): np.arange(0, 10, dtype=np.int64)}, now_ns=100)
        index.record("acme", {("p", "n"): seqs(20, 21, 25)}, now_ns=200)
        assert index.count_since("acme", 0) == 13
        assert index.count_since("acme", 150) == 3
        assert index.prune("acme", 150) == 1
        assert not index.contains("acme", "p", "n:5")
        assert index.contains("acme", "p", "n:25")


class TestSeqRuns:
    """``seq_runs`` names a receipt's ranges at every message: its one-run shortcut must
    give what the general path gives."""

    @pytest.mark.parametrize(
        ("values", "runs"),
        [
            ([], []),
            ([7], [(7, 7)]),
            ([3, 4, 5, 6], [(3, 6)]),
            ([6, 5, 4, 3], [(3, 6)]),
            ([1, 3, 4, 7], [(1, 1), (3, 4), (7, 7)]),
            ([4, 4, 5], [(4, 5)]),
            ([5, 4, 5, 6], [(4, 6)]),
            ([2, 1, 2, 3, 9], [(1, 3), (9, 9)]),
            ([0, MAX_SEQ], [(0, 0), (MAX_SEQ, MAX_SEQ)]),
            ([MAX_SEQ - 1, MAX_SEQ], [(MAX_SEQ - 1, MAX_SEQ)]),
        ],
    )
    def test_runs_are_ascending_and_cover_exactly_the_seqs(
        self, values: list[int], runs: list[tuple[int, int]]
    ) -> None:
        assert seq_runs(np.array(values, dtype=np.int64)) == runs
        assert seq_runs(values) == runs

    def test_a_batch_decoded_as_unsigned_seqs_is_one_run_of_python_ints(self) -> None:
        runs = seq_runs(np.arange(10, 42, dtype=np.uint64))
        assert runs == [(10, 41)]
        assert all(type(v) is int for run in runs for v in run)

    def test_random_seqs_match_a_set_of_their_values(self) -> None:
        rng = np.random.default_rng(11)
        for _ in range(50):
            values = rng.integers(0, 40, rng.integers(1, 30))
            covered = {v for first, last in seq_runs(values) for v in range(first, last + 1)}
            assert covered == set(values.tolist())


class TestMigration:
    def test_a_table_of_sample_ids_becomes_runs(self, tmp_path: Path) -> None:
        path = tmp_path / "seen.sqlite3"
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TABLE seen (tenant TEXT, pipeline TEXT, sample_id TEXT, "
                "ingested_at_ns INTEGER, PRIMARY KEY (tenant, pipeline, sample_id))"
            )
            db.executemany(
                "INSERT INTO seen VALUES (?, ?, ?, ?)",
                [("acme", "p", f"cam:{s}", 7) for s in (1, 2, 3, 8)] + [("acme", "p", "bad", 7)],
            )
        index = SeenIndex(path)
        assert index.stored("acme", ("p", "cam"), seqs(1, 2, 3, 4, 8)).tolist() == [
            True,
            True,
            True,
            False,
            True,
        ]
        index.close()
        with sqlite3.connect(path) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "seen" not in tables
        assert SeenIndex(path).count_since("acme", 0) == 4


@pytest.mark.parametrize("bad", ["cam-1", ":5", "cam:-1", "cam:x", f"cam:{2**63}"])
def test_a_malformed_sample_id_is_named(bad: str) -> None:
    with pytest.raises(ProtocolError, match="node:seq"):
        parse_sample_id(bad)
