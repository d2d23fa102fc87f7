"""The training data of a run: the time-split holdout per node, the gate's slice, the cut.

Samples go through the real Parquet sample store and SQLite label store; each frame's pixels
are its seq, so a test can tell which samples ended up where.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cloud_head._training_data import (
    GATE_EDGE_PER_NODE,
    HOLDOUT_BLOCK_S,
    HOLDOUT_EVERY,
    TrainingData,
    gate_holdout,
    holdout_mask,
    is_holdout,
    load_training_data,
)
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum.spec import DataClass, GateSpec, PipelineSpec
from continuum.wire import codec
from tests.rollout_kit import PIPELINE, pipeline_spec

TENANT = "acme"
#: Edge time of the first sample (seconds), the start of a holdout block.
T0 = 1_800_000_000.0


class Stores:
    """The sample and label stores of one test."""

    def __init__(self, root: Path) -> None:
        self.samples = SampleStore(root / "store")
        self.labels = LabelStore(root / "labels.sqlite3")

    def send(self, node: str, times_s: Sequence[float], *, first_seq: int = 0) -> list[int]:
        """Store ``node``'s labelled frames captured at ``times_s``; return their seqs."""
        seqs = [first_seq + i for i in range(len(times_s))]
        records = tuple(
            codec.SampleRecord(
                seq=seq,
                captured_at_ns=round(at * 1e9),
                tensor=np.full((1, 8, 8), seq, np.float32),
                label=seq % 10,
            )
            for seq, at in zip(seqs, times_s, strict=True)
        )
        self.samples.append(
            TENANT, codec.SampleBatch(PIPELINE, node, "v1", DataClass.INTERNAL, records)
        )
        self.samples.flush()
        return seqs

    def load(self, spec: PipelineSpec | None = None) -> TrainingData:
        return load_training_data(
            spec or pipeline_spec(TENANT), self.samples, self.labels, current=None
        )


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    built = Stores(tmp_path)
    try:
        yield built
    finally:
        built.labels.close()


def seqs_of(x: np.ndarray) -> set[int]:
    """The seqs of frames whose pixels are their seq."""
    return {int(frame.flat[0]) for frame in x}


def block_of(at_s: float) -> int:
    return int(round(at_s * 1e9) // round(HOLDOUT_BLOCK_S * 1e9))


class TestTimeSplit:
    def test_whole_blocks_of_a_nodes_capture_time_are_held_out(self, stores: Stores) -> None:
        times = [T0 + i * 0.5 for i in range(int(HOLDOUT_EVERY * HOLDOUT_BLOCK_S * 2 / 0.5))]
        stores.send("cam-1", times)

        data = stores.load()

        held = seqs_of(data.holdout_x)
        blocks_held = {block_of(times[s]) for s in held}
        blocks_trained = {block_of(times[s]) for s in seqs_of(data.train_x)}
        assert len(blocks_held) == 2  # one block in HOLDOUT_EVERY, over 2 cycles
        assert not blocks_held & blocks_trained  # no block straddles training and holdout
        per_block = int(HOLDOUT_BLOCK_S / 0.5)
        assert len(held) == 2 * per_block == data.held_out
        assert len(data.train_y) + data.held_out == len(times)

    def test_nodes_hold_out_by_their_own_offset_and_each_gets_some(self, stores: Stores) -> None:
        times = [T0 + i for i in range(int(HOLDOUT_EVERY * HOLDOUT_BLOCK_S))]
        nodes = [f"cam-{n}" for n in range(12)]
        for node in nodes:
            stores.send(node, times)

        data = stores.load()

        assert set(data.edge_per_node) == set(nodes)
        assert set(data.edge_per_node.values()) == {int(HOLDOUT_BLOCK_S)}
        held_blocks = {
            node: {block_of(t) for t in times if is_holdout(node, round(t * 1e9))} for node in nodes
        }
        assert len({min(b) for b in held_blocks.values()}) > 1  # staggered, not all at once

    def test_no_sample_moves_from_the_holdout_into_training_as_data_grows(
        self, stores: Stores
    ) -> None:
        stores.send("cam-1", [T0 + i for i in range(60)])
        stores.send("cam-2", [T0 + 3 + i * 2 for i in range(30)], first_seq=1000)
        before = stores.load()
        stores.send("cam-1", [T0 + 60 + i for i in range(60)], first_seq=60)
        stores.send("cam-2", [T0 + 63 + i * 2 for i in range(30)], first_seq=1030)

        after = stores.load()

        assert seqs_of(before.holdout_x) <= seqs_of(after.holdout_x)
        assert not seqs_of(before.holdout_x) & seqs_of(after.train_x)
        assert seqs_of(before.train_x) <= seqs_of(after.train_x)

    def test_a_node_uplinking_once_a_cycle_still_gets_held_out_samples(
        self, stores: Stores
    ) -> None:
        # At the cycle's own period, a fixed held-out position would always hit or always
        # miss this node's samples; the position moves from cycle to cycle instead.
        period = HOLDOUT_EVERY * HOLDOUT_BLOCK_S
        stores.send("periodic", [T0 + 3.0 + i * period for i in range(40)])

        data = stores.load()

        assert 0 < data.held_out < 40

    def test_the_mask_agrees_with_the_rule_sample_by_sample(self) -> None:
        nodes = ["cam-1", "cam-2", "edge-7"] * 40
        times = np.array([round((T0 + i * 1.7) * 1e9) for i in range(len(nodes))])

        mask = holdout_mask(nodes, times)

        assert mask.tolist() == [is_holdout(n, int(t)) for n, t in zip(nodes, times, strict=True)]


class TestGateSlice:
    def test_a_chatty_node_is_capped_to_its_newest_and_a_quiet_one_keeps_all(
        self, stores: Stores
    ) -> None:
        span = HOLDOUT_EVERY * HOLDOUT_BLOCK_S * 20  # 20 held-out blocks per node
        times = [T0 + i * 0.1 for i in range(int(span / 0.1))]
        chatty = stores.send("chatty", times)
        stores.send("quiet", [T0 + i * 25.0 for i in range(int(span / 25))], first_seq=10**6)

        data = stores.load()

        assert data.edge_per_node["chatty"] == GATE_EDGE_PER_NODE
        held_chatty = [s for s in chatty if is_holdout("chatty", round(times[s] * 1e9))]
        assert len(held_chatty) > GATE_EDGE_PER_NODE
        in_slice = {s for s in seqs_of(data.holdout_x) if s < 10**6}
        assert in_slice == set(sorted(held_chatty)[-GATE_EDGE_PER_NODE:])  # the newest
        assert 0 < data.edge_per_node["quiet"] < GATE_EDGE_PER_NODE
        assert data.held_out > sum(data.edge_per_node.values())  # older held-out stay out

    def test_the_gate_holdout_keeps_the_reference_and_the_edge_slice_apart(
        self, stores: Stores
    ) -> None:
        stores.send("cam-1", [T0 + i for i in range(100)])
        spec = pipeline_spec(TENANT).model_copy(
            update={"gate": GateSpec(holdout="tests.unit.cloud_head.test_training_data:ref")}
        )

        holdout = gate_holdout(spec, stores.load(spec))

        parts = holdout.parts()
        assert list(parts) == ["reference", "edge"]
        assert parts["reference"][0].shape == (7, 1, 8, 8)
        assert len(parts["edge"][1]) == holdout.edge_per_node["cam-1"] > 0
        x, y = holdout.combined()
        assert len(x) == len(y) == holdout.size() == 7 + holdout.edge_per_node["cam-1"]


def ref() -> tuple[np.ndarray, np.ndarray]:
    """A reference holdout of 7 flat 8x8 frames (reshaped to the model's input)."""
    return np.full((7, 64), -1.0), np.arange(7)


class TestTrainingCut:
    def test_each_node_records_its_newest_sample_trained_on(self, stores: Stores) -> None:
        times = [T0 + i for i in range(100)]
        stores.send("cam-1", times)
        stores.send("cam-2", times[:30], first_seq=500)

        data = stores.load()
        snapshot = data.snapshot(["2027-01-15"])

        trained_1 = [s for s in range(100) if not is_holdout("cam-1", round(times[s] * 1e9))]
        assert data.cuts["cam-1"].seq == max(trained_1)
        assert data.cuts["cam-1"].captured_at_ns == round(times[max(trained_1)] * 1e9)
        cut = snapshot["training_cut"]
        assert set(cut) == {"cam-1", "cam-2"}
        assert cut["cam-1"] == {
            "captured_at_ns": data.cuts["cam-1"].captured_at_ns,
            "seq": data.cuts["cam-1"].seq,
        }
        assert snapshot["gate_edge_slice"] == data.edge_per_node
        assert snapshot["holdout_rule"]["every"] == HOLDOUT_EVERY
