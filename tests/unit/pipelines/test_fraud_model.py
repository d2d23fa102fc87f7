"""The fraud model: its ONNX contract, the trainer's recipe and config, and the terminal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from continuum import metrics
from continuum.errors import ConfigError, InputMismatchError
from continuum.sources import Frame, Source
from edge_agent.sources import load_source
from pipelines.fraud.data import load_splits
from pipelines.fraud.features import FEATURE_NAMES, N_FEATURES
from pipelines.fraud.model import FraudMLP
from pipelines.fraud.terminal import BranchTerminal
from pipelines.fraud.train import (
    FINE_TUNE,
    SCRATCH,
    Recipe,
    fit,
    load_state,
    predict,
    recipe_for,
    rows_to_arrays,
    save,
)
from pipelines.fraud.transactions import iban_is_valid, make_bank

QUICK = Recipe(epochs=4)


@pytest.fixture(scope="module")
def model() -> FraudMLP:
    """A model trained briefly on the training split and calibrated on validation."""
    splits = load_splits()
    validation = (splits.validation.x, splits.validation.y)
    return fit(splits.train.x, splits.train.y, calibration=validation, recipe=QUICK, threads=2)


class TestOnnxContract:
    @pytest.mark.parametrize("batch", [1, 7, 300])
    def test_output_is_batch_by_one_float32_probabilities(
        self, model: FraudMLP, tmp_path: Path, batch: int
    ) -> None:
        _, onnx_path = save(model, tmp_path)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape == ["batch", N_FEATURES]
        x = np.array(load_splits().test_before.x[:batch])
        (out,) = session.run(None, {"input": x})
        assert out.shape == (batch, 1) and out.dtype == np.float32
        assert ((out >= 0) & (out <= 1)).all()
        np.testing.assert_allclose(out[:, 0], predict(model, x), rtol=1e-4, atol=1e-6)

    def test_state_round_trips_through_model_pt(self, model: FraudMLP, tmp_path: Path) -> None:
        pt_path, _ = save(model, tmp_path)
        again = FraudMLP()
        again.load_state_dict(load_state(pt_path))
        x = load_splits().test_before.x[:50]
        np.testing.assert_array_equal(predict(again, x), predict(model, x))


class TestTraining:
    def test_fit_beats_the_trivial_baselines_on_validation(self, model: FraudMLP) -> None:
        validation = load_splits().validation
        p = predict(model, validation.x)
        # Baselines: a constant score, and the best single rule (the customer's burst count).
        burst = validation.x[:, FEATURE_NAMES.index("txn_1h")]
        assert metrics.recall_at_fpr(validation.y, np.zeros(len(p)), 0.01) == 0.0
        assert metrics.roc_auc(validation.y, p) > metrics.roc_auc(validation.y, burst) + 0.05
        assert metrics.recall_at_fpr(validation.y, p, 0.01) > max(
            0.4, metrics.recall_at_fpr(validation.y, burst, 0.01) + 0.1
        )

    def test_the_declared_threshold_is_one_percent_fpr_on_validation(self, model: FraudMLP) -> None:
        validation = load_splits().validation
        flagged = predict(model, validation.x) >= 0.5
        assert 0.005 <= flagged[validation.y == 0].mean() <= 0.011
        assert flagged[validation.y == 1].mean() > 0.3

    def test_fine_tuning_on_uplinked_takeovers_lifts_recall_at_the_drift_branch(
        self, model: FraudMLP
    ) -> None:
        splits = load_splits()
        stream = splits.stream_after.at_branch("lux-gare")
        after = splits.test_after_drift_branch
        before = metrics.recall_at_fpr(after.y, predict(model, after.x), 0.01)
        p = predict(model, stream.x)
        chosen = (p >= 0.1) & (p <= 0.9) | (stream.y == 1)
        tuned = fit(
            splits.train.x, splits.train.y, new_x=stream.x[chosen], new_y=stream.y[chosen],
            base_state=model.state_dict(), calibration=(splits.validation.x, splits.validation.y),
            recipe=FINE_TUNE, threads=2,
        )  # fmt: skip
        assert before < 0.4
        assert metrics.recall_at_fpr(after.y, predict(tuned, after.x), 0.01) > before + 0.3

    def test_labels_other_than_0_and_1_are_refused(self) -> None:
        x = np.zeros((3, N_FEATURES), dtype=np.float32)
        with pytest.raises(InputMismatchError, match=r"labels 0 \(legitimate\) and 1 \(fraud\)"):
            fit(x, np.array([0, 1, 2]), recipe=Recipe(epochs=1))

    def test_rows_of_the_wrong_width_are_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="not one fraud feature vector"):
            rows_to_arrays([np.zeros(N_FEATURES - 1, dtype=np.float32)], [0])
        x, y = rows_to_arrays([np.ones(N_FEATURES, dtype=np.float32).tobytes()], [1])
        assert x.shape == (1, N_FEATURES) and y.tolist() == [1]


class TestRecipeConfig:
    def test_a_base_model_fine_tunes_and_options_override(self) -> None:
        assert recipe_for({}) == SCRATCH
        assert recipe_for({"base_model": "/m.pt"}).epochs == FINE_TUNE.epochs
        chosen = recipe_for({"epochs": 3, "weighting": "sqrt", "target_fpr": 0.005})
        assert (chosen.epochs, chosen.weighting, chosen.target_fpr) == (3, "sqrt", 0.005)

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"epoch": 3}, "unknown key.*epoch.*the fraud trainer takes"),
            ({"epochs": 0}, "epochs: expected a number > 0"),
            ({"epochs": 2.5}, "epochs: expected a whole number"),
            ({"weighting": "smote"}, "weighting 'smote' is not known; use one of sqrt"),
            ({"target_fpr": 1.5}, "target_fpr must be in"),
        ],
    )
    def test_bad_config_is_refused_naming_the_key(self, config: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            recipe_for(config)


class TestBranchTerminal:
    def test_it_loads_as_an_agent_source_and_carries_the_identifiers_as_fields(self) -> None:
        source = load_source(
            "pipelines.fraud.terminal:BranchTerminal", {"tps": 10_000, "max_frames": 20}
        )
        assert isinstance(source, Source)
        frames = list(source)
        assert len(frames) == 20 and all(isinstance(f, Frame) for f in frames)
        bank = make_bank()
        for frame in frames:
            assert set(frame.fields) == {"iban", "customer_name"}
            assert iban_is_valid(str(frame.fields["iban"]))
            assert frame.fields["customer_name"] in bank.names
            assert frame.tensor.shape == (N_FEATURES,) and frame.tensor.dtype == np.float32
            assert str(frame.fields["iban"]).encode() not in frame.tensor.tobytes()

    def test_it_replays_the_stream_split_then_switches_at_the_drift_frame(self) -> None:
        splits = load_splits()
        before = splits.stream_before.at_branch("lux-gare")
        after = splits.stream_after.at_branch("lux-gare")
        frames = list(BranchTerminal(tps=10_000, max_frames=300, drift_after_frames=100))
        tensors = np.stack([f.tensor for f in frames])
        np.testing.assert_array_equal(tensors[:100], before.x[:100])
        np.testing.assert_array_equal(tensors[100:], after.x[:200])

    def test_the_drift_starts_at_a_time_and_frames_are_paced(self) -> None:
        now = [1000.0]
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds

        terminal = BranchTerminal(
            tps=10.0, max_frames=30, drift_after_s=1.45, clock=lambda: now[0], sleep=sleep
        )
        frames = list(terminal)
        splits = load_splits()
        after = splits.stream_after.at_branch("lux-gare").x
        before = splits.stream_before.at_branch("lux-gare").x
        tensors = np.stack([f.tensor for f in frames])
        # Frames 0-14 are captured at 0.0-1.4 s, before the onset; 15 on after it.
        np.testing.assert_array_equal(tensors[:15], before[:15])
        np.testing.assert_array_equal(tensors[15:], after[:15])
        assert sum(slept) == pytest.approx(2.9)
        assert frames[15].captured_at_ns == int(1001.5 * 1e9)

    def test_labels_arrive_as_chargebacks_or_when_the_window_closes(self) -> None:
        terminal = BranchTerminal(
            tps=10_000, max_frames=6000, drift_after_frames=0, missed_share=0.5
        )
        frames = list(terminal)
        truth = load_splits().stream_after.at_branch("lux-gare").y[:6000]
        labels = np.array([f.label for f in frames])
        delays = np.array([f.label_delay_s for f in frames])
        assert not (labels[truth == 0]).any()
        disputed = labels == 1
        assert 0.3 < disputed.sum() / truth.sum() < 0.7  # about half of the frauds
        assert (delays[disputed] == 3.0).all() and (delays[~disputed] == 6.0).all()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"branch": "paris"}, "branch 'paris' is not one of the bank's: lux-gare"),
            ({"tps": 0}, "tps .transactions per second. must be in"),
            ({"chargeback_delay_s": 9.0}, "at most dispute_window_s"),
            ({"missed_share": 1.5}, "missed_share must be in"),
            ({"drift_after_frames": -1}, "drift_after_frames must be >= 0"),
        ],
    )
    def test_bad_arguments_are_refused(self, kwargs: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            BranchTerminal(**kwargs)
