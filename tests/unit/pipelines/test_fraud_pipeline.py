"""The fraud-scoring pipeline declaration against its model, terminal and residency policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cloud_head.gate import GateHoldout, gate
from continuum import DataClass, Pipeline, select, task
from continuum.drift import LabelsSpec, monitor_for
from continuum.errors import InputMismatchError, SpecError
from pipelines.fraud.data import load_splits, reference_holdout
from pipelines.fraud.features import N_FEATURES
from pipelines.fraud.terminal import BranchTerminal
from pipelines.fraud.train import FINE_TUNE, Recipe, fit, predict, save
from pipelines.fraud_scoring import pipe


class TestTheDeclaration:
    def test_it_declares_a_binary_task_gated_on_recall_at_one_percent_fpr(self) -> None:
        spec = pipe.spec
        assert spec.edge.task == task.binary(threshold=0.5)
        assert spec.edge.input.shape == (N_FEATURES,)
        assert spec.gate.metric == "recall_at_fpr_0.01"
        assert spec.gate.holdout == "pipelines.fraud.data:reference_holdout"

    def test_the_identifiers_the_terminal_sends_are_classed_to_stay_in_luxembourg(self) -> None:
        fields = pipe.spec.edge.input.fields
        frame = next(iter(BranchTerminal(tps=10_000, max_frames=1)))
        assert set(frame.fields) == set(fields)
        assert fields["customer_name"] == DataClass.RESTRICTED
        assert fields["iban"] == DataClass.CONFIDENTIAL

    def test_a_classification_policy_is_refused_for_this_task(self) -> None:
        other = Pipeline("fraud-misdeclared", tenant="acme", data_class="internal")
        other.edge(model="fraud-mlp", shape=(N_FEATURES,), task=task.binary(threshold=0.5))
        with pytest.raises(SpecError, match="near_threshold"):
            other.uplink(select.low_confidence(0.7))


class TestTheModelMeetsTheDeclaredContract:
    def test_the_exported_model_reads_as_the_declared_binary_task(self, tmp_path: Path) -> None:
        splits = load_splits()
        model = fit(
            splits.train.x, splits.train.y, calibration=(splits.validation.x, splits.validation.y),
            recipe=Recipe(epochs=2), threads=2,
        )  # fmt: skip
        _, onnx_path = save(model, tmp_path)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = np.array(splits.validation.x[:500])
        (out,) = session.run(None, {"input": x})
        read = pipe.spec.edge.task.read(out)
        assert read.kind == "binary" and read.rows == 500
        np.testing.assert_array_equal(read.prediction, out[:, 0] >= 0.5)
        # Logits would break the contract, and the task says so.
        with pytest.raises(InputMismatchError, match="end it in a sigmoid"):
            pipe.spec.edge.task.read(np.log(out / (1 - out + 1e-9)) - 5.0)


class TestTheDeclaredLabelDetectorSeesTheTakeovers:
    def test_it_fires_after_the_onset_at_lux_gare_and_not_before(self) -> None:
        (spec,) = [d for d in pipe.spec.uplink.detectors if isinstance(d, LabelsSpec)]
        splits = load_splits()
        model = fit(
            splits.train.x, splits.train.y, calibration=(splits.validation.x, splits.validation.y),
            recipe=Recipe(epochs=4), threads=2,
        )  # fmt: skip
        onset = 4000
        frames = list(BranchTerminal(tps=10_000, max_frames=9000, drift_after_frames=onset))
        scores = predict(model, np.stack([f.tensor for f in frames]))
        errors = ((scores >= 0.5).astype(np.int64) != np.array([f.label for f in frames])).astype(
            np.int64
        )
        monitor = monitor_for(spec)
        fired = [
            start
            for start in range(0, len(errors), 50)
            if monitor.update(errors[start : start + 50]).drifted
        ]
        assert fired, "the labels detector never fired on the takeover wave"
        assert min(fired) >= onset
        assert min(fired) < onset + 3000


class TestTheDeclaredGateJudgesARetrain:
    def test_a_fine_tune_on_the_takeovers_passes_and_the_old_model_would_not(
        self, tmp_path: Path
    ) -> None:
        splits = load_splits()
        calibration = (splits.validation.x, splits.validation.y)
        first = fit(splits.train.x, splits.train.y, calibration=calibration,
                    recipe=Recipe(epochs=4), threads=2)  # fmt: skip
        stream = splits.stream_after.at_branch("lux-gare")
        half = len(stream.y) // 2
        # What the branch uplinked in the first half (near the threshold, random, chargebacks)
        # trains; the second half is the gate's held-out edge slice.
        p = predict(first, stream.x[:half])
        chosen = np.flatnonzero((np.abs(p - 0.5) <= 0.4) | (stream.y[:half] == 1))
        tuned = fit(splits.train.x, splits.train.y, new_x=stream.x[chosen],
                    new_y=stream.y[chosen], base_state=first.state_dict(),
                    calibration=calibration, recipe=FINE_TUNE, threads=2)  # fmt: skip
        _, first_onnx = save(first, tmp_path / "first")
        _, tuned_onnx = save(tuned, tmp_path / "tuned")
        ref_x, ref_y = reference_holdout()
        holdout = GateHoldout(
            reference_x=ref_x, reference_y=ref_y,
            edge_x=np.array(stream.x[half:]), edge_y=np.array(stream.y[half:]),
        )  # fmt: skip
        spec, declared = pipe.spec.gate, pipe.spec.edge.task
        forward = gate(tuned_onnx, first_onnx, holdout, spec, task=declared)
        backward = gate(first_onnx, tuned_onnx, holdout, spec, task=declared)
        assert forward.passed and not backward.passed
        assert forward.parts["edge"].candidate_score > forward.parts["edge"].current_score + 0.3
