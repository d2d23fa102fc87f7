"""The cloud teacher labels uplinked samples; the rest wait in the human review queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_head.labelling import LabelStore, review_queue
from cloud_head.registry import ModelRegistry
from cloud_head.store import SampleStore
from cloud_head.teacher import Teacher, teacher_artifact
from continuum.cli import main
from continuum.errors import ConfigError, NotFoundError, SpecError
from continuum.spec import DataClass, PipelineSpec, load_pipeline
from continuum.wire.codec import SampleBatch, SampleRecord
from pipelines.digits.data import load_splits
from pipelines.digits.train import Recipe, fit, save

ROOT = Path(__file__).resolve().parents[3]
N = 120
#: The pipeline's tenant and name, as every operator command is given them.
WHO = ["--tenant", "acme", "--pipeline", "digits-inspection"]


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return load_pipeline(ROOT / "pipelines" / "digits_inspection.py")


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real digits model, trained as the demo trains its first (seconds on one core)."""
    splits = load_splits()
    model = fit(splits.train_x, splits.train_y, recipe=Recipe(epochs=30))
    _, onnx_path = save(model, tmp_path_factory.mktemp("teacher"))
    return onnx_path


@pytest.fixture
def head(tmp_path: Path, spec: PipelineSpec) -> Iterator[tuple[Path, SampleStore, LabelStore]]:
    """A cloud head state directory holding N stream digits, the first 10 labelled at the edge."""
    splits = load_splits()
    records = tuple(
        SampleRecord(
            seq=i,
            captured_at_ns=1_700_000_000_000_000_000 + i,
            tensor=splits.stream_x[i].astype(np.float32),
            prediction=int(splits.stream_y[i]),
            confidence=0.5,
            label=int(splits.stream_y[i]) if i < 10 else None,
        )
        for i in range(N)
    )
    store = SampleStore(tmp_path / "store")
    store.append(spec.tenant, SampleBatch(spec.name, "cam-1", "v1", DataClass.INTERNAL, records))
    store.flush()
    with LabelStore(tmp_path / "state" / "labels.sqlite3") as labels:
        yield tmp_path, store, labels


def truth(sample_id: str) -> int:
    return int(load_splits().stream_y[int(sample_id.split(":")[1])])


class TestTeacher:
    def test_labels_confident_answers_and_proposes_the_rest(
        self, spec: PipelineSpec, teacher_model: Path, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        teacher = Teacher(
            spec, store, labels, teacher_model, model_name="teacher", accept_confidence=0.9
        )
        result = teacher.run_once()
        assert result.seen == N - 10  # the edge-labelled ones need no teacher
        assert result.proposed == N - 10
        recorded = labels.labels(spec.tenant, spec.name)
        assert len(recorded) == result.labelled > (N - 10) // 2
        assert all(label.source == "teacher" for label in recorded.values())
        correct = sum(label.label == truth(sid) for sid, label in recorded.items())
        assert correct / len(recorded) >= 0.9
        proposals = labels.proposals(spec.tenant, spec.name)
        below = {sid for sid, p in proposals.items() if p.confidence < 0.9}
        assert below == set(proposals) - set(recorded)

    def test_a_second_pass_does_no_work_twice(
        self, spec: PipelineSpec, teacher_model: Path, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        teacher = Teacher(spec, store, labels, teacher_model, model_name="teacher")
        teacher.run_once()
        assert teacher.run_once().seen == 0

    def test_feedback_outranks_the_teacher(
        self, spec: PipelineSpec, teacher_model: Path, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        Teacher(
            spec, store, labels, teacher_model, model_name="t", accept_confidence=0.01
        ).run_once()
        sid = "cam-1:50"
        wrong = (truth(sid) + 1) % 10
        assert labels.put(spec.tenant, spec.name, sid, wrong, source="delayed_feedback")
        assert not labels.put(spec.tenant, spec.name, sid, truth(sid), source="teacher")

    def test_a_bad_threshold_is_refused(
        self, spec: PipelineSpec, teacher_model: Path, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        with pytest.raises(ConfigError, match="accept_confidence"):
            Teacher(spec, store, labels, teacher_model, model_name="t", accept_confidence=1.5)

    def test_an_unregistered_teacher_is_named(self, tmp_path: Path) -> None:
        registry = ModelRegistry(tmp_path / "registry")
        try:
            with pytest.raises(NotFoundError, match="inspector-large"):
                teacher_artifact(registry, "acme", "inspector-large")
        finally:
            registry.close()


def binary_teacher(path: Path, weights: np.ndarray) -> Path:
    """An ONNX model answering P(fraud) = sigmoid(x . weights) as (batch, 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])],
        "binary-teacher",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights.reshape(-1, 1).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class TestBinaryTeacher:
    def test_labels_at_the_tasks_threshold_with_max_p_one_minus_p_as_confidence(
        self, tmp_path: Path
    ) -> None:
        # A softmax over the one column would have said "not fraud, certain" for every sample.
        spec = load_pipeline(ROOT / "pipelines" / "fraud_scoring.py")
        width = spec.edge.input.shape[0]
        weights = np.zeros(width, dtype=np.float32)
        weights[0] = 1.0  # P(fraud) = sigmoid(first feature)
        first = [-4.0, -0.1, 0.1, 4.0]  # P ~ 0.018, 0.475, 0.525, 0.982
        records = tuple(
            SampleRecord(
                seq=i,
                captured_at_ns=1_700_000_000_000_000_000 + i,
                tensor=np.array([value] + [0.0] * (width - 1), dtype=np.float32),
                prediction=0,
                confidence=0.5,
                label=None,
            )
            for i, value in enumerate(first)
        )
        store = SampleStore(tmp_path / "store")
        store.append(spec.tenant, SampleBatch(spec.name, "gare-1", "v1", spec.data_class, records))
        store.flush()
        model = binary_teacher(tmp_path / "teacher.onnx", weights)
        with LabelStore(tmp_path / "labels.sqlite3") as labels:
            done = Teacher(spec, store, labels, model, model_name="t", accept_confidence=0.9)
            assert done.run_once().labelled == 2
            got = labels.labels(spec.tenant, spec.name)
            assert {sid: label.label for sid, label in got.items()} == {
                "gare-1:0": 0,
                "gare-1:3": 1,
            }
            proposals = labels.proposals(spec.tenant, spec.name)
            assert proposals["gare-1:1"].label == 0 and proposals["gare-1:2"].label == 1
            assert proposals["gare-1:1"].confidence == pytest.approx(1 - 1 / (1 + np.exp(0.1)))

    def test_a_teacher_for_an_anomaly_pipeline_is_refused_naming_the_sources_that_fit(
        self, tmp_path: Path
    ) -> None:
        spec = load_pipeline(ROOT / "pipelines" / "predictive_maintenance.py")
        with LabelStore(tmp_path / "labels.sqlite3") as labels, pytest.raises(SpecError) as caught:
            Teacher(spec, SampleStore(tmp_path / "s"), labels, tmp_path / "t.onnx", model_name="t")
        assert "delayed_feedback" in str(caught.value)


class TestReviewQueue:
    def test_pending_are_unlabelled_least_certain_first(
        self, spec: PipelineSpec, teacher_model: Path, head: tuple[Path, SampleStore, LabelStore]
    ) -> None:
        _, store, labels = head
        assert len(review_queue(store, labels, spec.tenant, spec.name, limit=None)) == N - 10
        Teacher(
            spec, store, labels, teacher_model, model_name="t", accept_confidence=0.9
        ).run_once()
        queue = review_queue(store, labels, spec.tenant, spec.name, limit=None)
        assert queue and all(item.proposal is not None for item in queue)
        assert all(item.proposal and item.proposal.confidence < 0.9 for item in queue)
        doubts = [item.doubt for item in queue]
        assert doubts == sorted(doubts)
        assert len(review_queue(store, labels, spec.tenant, spec.name, limit=3)) == min(
            3, len(queue)
        )


class TestLabelCommand:
    def test_list_accept_and_fix(
        self,
        spec: PipelineSpec,
        teacher_model: Path,
        head: tuple[Path, SampleStore, LabelStore],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, store, labels = head
        Teacher(
            spec, store, labels, teacher_model, model_name="t", accept_confidence=1.0
        ).run_once()
        assert main(["label", "list", *WHO, "--root", str(root), "--limit", "5"]) == 0
        listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
        assert len(listed) == 5
        first, second = listed[0], listed[1]
        proposal = labels.proposals(spec.tenant, spec.name)[first].label
        assert main(["label", "accept", *WHO, "--root", str(root), first]) == 0
        assert main(["label", "fix", *WHO, "--root", str(root), second, "7"]) == 0
        got = labels.labels(spec.tenant, spec.name)
        assert (got[first].label, got[first].source) == (proposal, "human")
        assert (got[second].label, got[second].source) == (7, "human")
        assert main(["label", "show", *WHO, "--root", str(root), second]) == 0
        shown = capsys.readouterr().out
        assert "label 7 from human" in shown and shown.count("\n") >= 8  # the 8x8 image

    def test_unknown_ids_and_bad_labels_are_refused_by_name(
        self, head: tuple[Path, SampleStore, LabelStore], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, _, _ = head
        assert main(["label", "accept", *WHO, "--root", str(root), "cam-9:1"]) == 1
        assert "not pending review: cam-9:1" in capsys.readouterr().err
        assert main(["label", "fix", *WHO, "--root", str(root), "cam-9:1", "3"]) == 1
        assert "no stored sample 'cam-9:1'" in capsys.readouterr().err
        assert main(["label", "fix", *WHO, "--root", str(root), "cam-1:20", "-1"]) == 2
        assert main(["label", "list", *WHO, "--root", str(root / "nowhere")]) == 2
        assert "--root" in capsys.readouterr().err
