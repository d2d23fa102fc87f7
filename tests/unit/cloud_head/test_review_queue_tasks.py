"""The human review queue for a binary scorer: the fraud pipeline's second label source.

Samples the fraud agent uplinked without a label wait in the queue, least certain first in
the binary task's terms (closest to its threshold); an analyst's label is 0 or 1 only, and
it outranks a chargeback in the labels the trainer reads. The stores are the real ones
(SQLite labels, Parquet samples) in a tmp cloud head, the task the real fraud pipeline's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_head._retrain import scored_task
from cloud_head.cli.label import _task
from cloud_head.labelling import LabelStore, fit_label, labelled, review_queue, to_xy
from cloud_head.registry import ModelRegistry, ModelVersion
from cloud_head.store import SampleStore
from continuum import task
from continuum.cli import main
from continuum.errors import ConfigError
from continuum.spec import DataClass, PipelineSpec
from continuum.wire.codec import SampleBatch, SampleRecord
from pipelines.fraud.features import N_FEATURES
from pipelines.fraud.model import FraudMLP, export_onnx
from pipelines.fraud_scoring import pipe

#: P(fraud) the branch model gave each uplinked transaction (seq = position): near-threshold
#: picks, the random share's confident ones, and one a chargeback labels while it waits.
SCORES = [0.03, 0.47, 0.91, 0.58, 0.12, 0.51, 0.99, 0.35]
CHARGEBACK_SEQ = 5
NODE = "lux-gare"


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return pipe.spec


@pytest.fixture
def head(tmp_path: Path, spec: PipelineSpec) -> Iterator[tuple[Path, SampleStore, LabelStore]]:
    """A cloud head state directory holding the fraud agent's uplinked transactions."""
    # What the edge records: the task's reading of the model's outputs, score and decision.
    scored = spec.edge.task.read(np.array(SCORES, dtype=np.float32).reshape(-1, 1))
    records = tuple(
        SampleRecord(
            seq=seq,
            captured_at_ns=1_800_000_000_000_000_000 + seq,
            tensor=np.full((N_FEATURES,), seq, dtype=np.float32),
            prediction=int(scored.prediction[seq]),
            confidence=float(scored.score[seq]),
        )
        for seq in range(len(SCORES))
    )
    store = SampleStore(tmp_path / "store")
    store.append(spec.tenant, SampleBatch(spec.name, NODE, "v1", DataClass.INTERNAL, records))
    store.flush()
    with LabelStore(tmp_path / "state" / "labels.sqlite3") as labels:
        labels.put(spec.tenant, spec.name, f"{NODE}:{CHARGEBACK_SEQ}", 1, source="delayed_feedback")
        yield tmp_path, store, labels


def register_fraud_model(root: Path, spec: PipelineSpec) -> None:
    """Register the fraud pipeline's real model graph (one output: P(fraud)) as the
    controller does, its gate record naming the task it scored, and make it current."""
    gate = scored_task(spec.gate_metric, spec.edge.task)
    registered(root, gate, tenant=spec.tenant, pipeline=spec.name, model=spec.edge.model)


def who(spec: PipelineSpec, root: Path) -> list[str]:
    return ["--tenant", spec.tenant, "--pipeline", spec.name, "--root", str(root)]


def seqs(ids: list[str]) -> list[int]:
    return [int(sid.split(":")[1]) for sid in ids]


class TestQueueOrder:
    def test_a_binary_queue_puts_the_scores_closest_to_the_threshold_first(
        self, spec: PipelineSpec, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        queue = review_queue(store, labels, spec.tenant, spec.name, limit=None, task=spec.edge.task)
        # 0.47, 0.58, 0.35, 0.12, 0.91, 0.03, 0.99; 0.51 waits no more: its chargeback came.
        assert seqs([item.sample_id for item in queue]) == [1, 3, 7, 4, 2, 0, 6]
        assert [item.doubt for item in queue] == pytest.approx(
            [0.03, 0.08, 0.15, 0.38, 0.41, 0.47, 0.49]
        )
        assert [item.prediction for item in queue] == [0, 1, 0, 0, 1, 0, 1]
        assert queue[0].confidence == pytest.approx(0.47)  # the score, as the edge recorded it

    def test_without_the_task_the_queue_orders_as_a_classifier_s(
        self, spec: PipelineSpec, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        # What a binary queue looked like before: the surest "legitimate" (0.03) first.
        _, store, labels = head
        queue = review_queue(store, labels, spec.tenant, spec.name, limit=3)
        assert seqs([item.sample_id for item in queue]) == [0, 4, 7]

    def test_an_anomaly_queue_is_ordered_around_its_own_threshold(
        self, spec: PipelineSpec, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        queue = review_queue(
            store, labels, spec.tenant, spec.name, limit=3, task=task.anomaly(threshold=0.1)
        )
        assert seqs([item.sample_id for item in queue]) == [4, 0, 7]  # 0.12, 0.03, 0.35

    def test_label_list_reads_the_task_its_model_recorded(
        self,
        spec: PipelineSpec,
        head: tuple[Path, SampleStore, LabelStore],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, _, _ = head
        register_fraud_model(root, spec)
        assert main(["label", "list", *who(spec, root), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["task"] == "binary(threshold=0.5)"
        assert seqs([s["sample_id"] for s in document["samples"]]) == [1, 3, 7, 4, 2, 0, 6]
        assert main(["label", "list", *who(spec, root), "--limit", "2"]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        assert "binary(threshold=0.5): scores closest to 0.5 first" in header
        assert [row.split()[0] for row in rows] == [f"{NODE}:1", f"{NODE}:3"]


class TestAnalystLabels:
    @pytest.mark.parametrize("bad", ["2", "0.5", "-1.0", "7"])
    def test_a_binary_label_other_than_0_or_1_is_refused_naming_them(
        self,
        spec: PipelineSpec,
        head: tuple[Path, SampleStore, LabelStore],
        capsys: pytest.CaptureFixture[str],
        bad: str,
    ) -> None:
        root, _, labels = head
        register_fraud_model(root, spec)
        assert main(["label", "fix", *who(spec, root), f"{NODE}:1", bad]) == 2
        error = capsys.readouterr().err
        assert "binary(threshold=0.5)" in error and "0 or 1 only" in error and "fix:" in error
        assert labels.get(spec.tenant, spec.name, f"{NODE}:1") is None

    def test_a_word_is_refused_naming_the_labels(
        self,
        spec: PipelineSpec,
        head: tuple[Path, SampleStore, LabelStore],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, _, _ = head
        assert main(["label", "fix", *who(spec, root), f"{NODE}:1", "yes"]) == 2
        assert "0 or 1 for a binary" in capsys.readouterr().err

    def test_fit_label_refuses_what_the_task_cannot_learn(self, spec: PipelineSpec) -> None:
        binary = spec.edge.task
        assert fit_label(binary, 1) == 1 and fit_label(binary, 0.0) == 0
        with pytest.raises(ConfigError, match="0 or 1 only"):
            fit_label(binary, 3)
        with pytest.raises(ConfigError, match="class indexes"):
            fit_label(task.classification(), 2.5)
        with pytest.raises(ConfigError, match="0 to 9"):
            fit_label(task.classification(), 10, classes=10)
        assert fit_label(task.regression(), 412.5) == 412.5

    def test_an_analyst_s_fraud_label_overrides_the_chargeback_and_trains(
        self,
        spec: PipelineSpec,
        head: tuple[Path, SampleStore, LabelStore],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, store, labels = head
        register_fraud_model(root, spec)
        charged = f"{NODE}:{CHARGEBACK_SEQ}"
        # The one-output fraud model once bounded a label to "1 class": 1 was refused.
        assert main(["label", "fix", *who(spec, root), charged, "0"]) == 0
        assert main(["label", "fix", *who(spec, root), f"{NODE}:1", "1"]) == 0
        assert "labelled 1 (human)" in capsys.readouterr().out
        # A chargeback arriving after the analyst's answer does not replace it.
        labels.put(spec.tenant, spec.name, charged, 1, source="delayed_feedback")
        table = labelled(store, labels, spec.tenant, spec.name)
        _, y, ids = to_xy(table)
        got = dict(zip(ids, y.tolist(), strict=True))
        assert got == {charged: 0, f"{NODE}:1": 1}
        assert table.column("label_source").to_pylist() == ["human", "human"]
        assert y.dtype == np.int64  # 0/1 classes, not values
        queue = review_queue(store, labels, spec.tenant, spec.name, limit=None, task=spec.edge.task)
        assert f"{NODE}:1" not in {item.sample_id for item in queue}


@pytest.mark.parametrize(
    "declared",
    [
        task.binary(threshold=0.123456789),  # more digits than describe() keeps
        task.anomaly(threshold=2.5),
        task.classification(),
        task.regression(uncertainty=True),
        task.regression(),
    ],
)
def test_the_task_a_gate_record_holds_reads_back_whole(tmp_path: Path, declared: task.Task) -> None:
    # Through the registry's own storage, as `label list` reads it.
    assert _task(registered(tmp_path, scored_task(declared.default_metric, declared))) == declared


@pytest.mark.parametrize(
    "gate",
    [
        {"task": "binary(threshold=0.5)"},  # text only: a record from before task_spec
        {"task_spec": {"kind": "ranking"}},  # a kind this release does not know
        {"task_spec": {"kind": "binary", "threshold": "high"}},
    ],
)
def test_a_record_without_a_readable_task_is_no_task(tmp_path: Path, gate: dict[str, Any]) -> None:
    assert _task(registered(tmp_path, gate)) is None


def registered(
    root: Path, gate: dict[str, Any], *, tenant: str = "acme", pipeline: str = "p", model: str = "m"
) -> list[ModelVersion]:
    """Register the fraud model's graph as the current version of ``pipeline``, its gate
    record ``gate``, as the controller does; return the stored versions."""
    registry = ModelRegistry(root / "registry")
    try:
        version = registry.register(
            tenant,
            pipeline,
            model,
            export_onnx(FraudMLP(), root / f"{model}.onnx"),
            sign=lambda model, version, digest: "ab" * 64,
            parent=None,
            code_version="git:test",
            metrics={},
            gate=gate,
            lineage={},
        )
        registry.set_current(tenant, pipeline, version.version, "test")
        return registry.list(tenant, pipeline)
    finally:
        registry.close()


def test_accepting_a_regressions_guess_records_its_value_not_a_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A regression's guess is the value the edge sent as the sample's score; its prediction
    # field is no value, and accepting it once recorded 0 for every sample.
    tenant, pipeline = "acme", "remaining-life"
    values = [412.5, 88.25]
    records = tuple(
        SampleRecord(
            seq=seq,
            captured_at_ns=1_800_000_000_000_000_000 + seq,
            tensor=np.zeros((N_FEATURES,), dtype=np.float32),
            prediction=0,
            confidence=value,
        )
        for seq, value in enumerate(values)
    )
    store = SampleStore(tmp_path / "store")
    store.append(tenant, SampleBatch(pipeline, NODE, "v1", DataClass.INTERNAL, records))
    store.flush()
    LabelStore(tmp_path / "state" / "labels.sqlite3").close()  # the head's state, as it runs
    registered(tmp_path, scored_task("mae", task.regression()), tenant=tenant, pipeline=pipeline)
    args = ["--tenant", tenant, "--pipeline", pipeline, "--root", str(tmp_path)]
    assert main(["label", "accept", *args, f"{NODE}:0", f"{NODE}:1"]) == 0
    assert "labelled 412.5 (human)" in capsys.readouterr().out
    with LabelStore(tmp_path / "state" / "labels.sqlite3") as labels:
        got = {sid: label.label for sid, label in labels.labels(tenant, pipeline).items()}
    assert got == {f"{NODE}:0": 412.5, f"{NODE}:1": 88.25}
