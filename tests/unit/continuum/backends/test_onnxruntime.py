"""The ONNX Runtime backend on real models: outputs, metadata, input checks, load errors."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from continuum.backends import InferenceBackend, OnnxRuntimeBackend, TensorMeta
from continuum.backends import onnxruntime as onnxruntime_backend
from continuum.errors import BackendError, BackendUnavailableError, InputMismatchError


def loaded(path: Path, **kwargs: Any) -> OnnxRuntimeBackend:
    backend = OnnxRuntimeBackend(**kwargs)
    backend.load(path)
    return backend


class TestOutputs:
    def test_outputs_match_the_numpy_reference(self, classifier: Any, frames: np.ndarray) -> None:
        probs = loaded(classifier.path).infer(frames)

        assert probs.shape == (5, 4)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs, classifier.reference(frames), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("batch", [1, 3, 17])
    def test_any_batch_size_runs_on_the_dynamic_axis(self, classifier: Any, batch: int) -> None:
        x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)

        probs = loaded(classifier.path).infer(x)

        np.testing.assert_allclose(probs, classifier.reference(x), rtol=1e-5, atol=1e-6)

    def test_a_non_contiguous_batch_gives_the_same_outputs(
        self, classifier: Any, frames: np.ndarray
    ) -> None:
        backend = loaded(classifier.path)
        transposed = np.ascontiguousarray(frames.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        assert not transposed.flags.c_contiguous

        np.testing.assert_allclose(backend.infer(transposed), backend.infer(frames), rtol=1e-6)

    def test_loading_another_model_swaps_what_infer_runs(
        self, classifier: Any, make_classifier: Any, frames: np.ndarray
    ) -> None:
        backend = loaded(classifier.path)
        other = make_classifier("seed7.onnx", seed=7)

        backend.load(other.path)

        np.testing.assert_allclose(
            backend.infer(frames), other.reference(frames), rtol=1e-5, atol=1e-6
        )


class TestMetadata:
    def test_input_and_output_metadata_describe_the_model(self, classifier: Any) -> None:
        backend = loaded(classifier.path)

        assert backend.inputs == [TensorMeta("input", (None, 1, 8, 8), "float32")]
        assert backend.outputs == [TensorMeta("probs", (None, 4), "float32")]
        assert backend.inputs[0].describe() == "float32[N,1,8,8]"

    def test_the_backend_satisfies_the_protocol(self, classifier: Any) -> None:
        backend = loaded(classifier.path)

        assert isinstance(backend, InferenceBackend)
        assert backend.name == "onnxruntime"

    def test_the_cpu_provider_runs_here(self, classifier: Any) -> None:
        assert "CPUExecutionProvider" in loaded(classifier.path).providers

    def test_a_fixed_batch_model_reports_its_fixed_batch(self, make_classifier: Any) -> None:
        fixed = make_classifier("fixed.onnx", batch=1)

        assert loaded(fixed.path).inputs[0].shape == (1, 1, 8, 8)


class TestInputChecks:
    def test_wrong_dtype_names_expected_and_got(self, classifier: Any) -> None:
        backend = loaded(classifier.path)

        with pytest.raises(InputMismatchError) as caught:
            backend.infer(np.zeros((4, 1, 8, 8), dtype=np.float64))

        assert "expected float32[N,1,8,8], got float64[4,1,8,8]" in str(caught.value)
        assert caught.value.expected == "float32[N,1,8,8]"
        assert caught.value.got == "float64[4,1,8,8]"

    def test_wrong_rank_names_expected_and_got(self, classifier: Any) -> None:
        with pytest.raises(
            InputMismatchError, match=r"expected float32\[N,1,8,8\], got float64\[4,8,8\]"
        ):
            loaded(classifier.path).infer(np.zeros((4, 8, 8), dtype=np.float64))

    def test_wrong_fixed_dimension_names_the_axis(self, classifier: Any) -> None:
        with pytest.raises(InputMismatchError, match=r"axis 2.*got float32\[2,1,9,8\]"):
            loaded(classifier.path).infer(np.zeros((2, 1, 9, 8), dtype=np.float32))

    def test_a_fixed_batch_model_refuses_another_batch_size(self, make_classifier: Any) -> None:
        fixed = make_classifier("fixed.onnx", batch=1)

        with pytest.raises(InputMismatchError, match=r"axis 0.*expected float32\[1,1,8,8\]"):
            loaded(fixed.path).infer(np.zeros((2, 1, 8, 8), dtype=np.float32))

    def test_an_empty_batch_is_refused(self, classifier: Any) -> None:
        with pytest.raises(InputMismatchError, match="empty batch"):
            loaded(classifier.path).infer(np.zeros((0, 1, 8, 8), dtype=np.float32))

    def test_a_list_is_refused_naming_its_type(self, classifier: Any) -> None:
        with pytest.raises(InputMismatchError, match="got list"):
            loaded(classifier.path).infer([[0.0] * 8] * 8)

    def test_a_mismatch_is_also_a_value_error(self, classifier: Any) -> None:
        with pytest.raises(ValueError):
            loaded(classifier.path).infer(np.zeros((1, 1, 8, 8), dtype=np.int64))


class TestLoadErrors:
    def test_a_missing_file_names_the_path(self, tmp_path: Path) -> None:
        missing = tmp_path / "absent.onnx"

        with pytest.raises(BackendError, match=re.escape(f"{missing}: file not found")):
            OnnxRuntimeBackend().load(missing)

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(BackendError, match="is a directory"):
            OnnxRuntimeBackend().load(tmp_path)

    def test_random_bytes_are_refused_with_the_reason(self, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(np.random.default_rng(0).bytes(4096))

        with pytest.raises(BackendError) as caught:
            OnnxRuntimeBackend().load(garbage)

        assert str(garbage) in str(caught.value)
        assert "protobuf" in str(caught.value).lower()
        assert caught.value.__cause__ is not None

    def test_a_truncated_model_is_refused(self, classifier: Any, tmp_path: Path) -> None:
        truncated = tmp_path / "truncated.onnx"
        truncated.write_bytes(classifier.path.read_bytes()[:300])

        with pytest.raises(BackendError, match=re.escape(str(truncated))):
            OnnxRuntimeBackend().load(truncated)

    def test_a_text_file_is_not_onnx(self, tmp_path: Path) -> None:
        text = tmp_path / "model.onnx"
        text.write_text("this is not a model\n")

        with pytest.raises(BackendError, match=re.escape(str(text))):
            OnnxRuntimeBackend().load(text)

    def test_a_failed_load_keeps_the_previous_model_serving(
        self, classifier: Any, tmp_path: Path, frames: np.ndarray
    ) -> None:
        backend = loaded(classifier.path)
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x00" * 64)

        with pytest.raises(BackendError):
            backend.load(bad)

        np.testing.assert_allclose(
            backend.infer(frames), classifier.reference(frames), rtol=1e-5, atol=1e-6
        )

    def test_a_model_with_two_inputs_is_refused(self, two_input_model: Path) -> None:
        with pytest.raises(BackendError, match="2 inputs"):
            OnnxRuntimeBackend().load(two_input_model)

    def test_infer_before_load_says_to_load(self) -> None:
        with pytest.raises(BackendError, match="call load"):
            OnnxRuntimeBackend().infer(np.zeros((1, 1, 8, 8), dtype=np.float32))

    def test_infer_after_close_says_to_load(self, classifier: Any) -> None:
        backend = loaded(classifier.path)
        backend.close()

        with pytest.raises(BackendError, match="call load"):
            backend.infer(np.zeros((1, 1, 8, 8), dtype=np.float32))


class TestSettings:
    def test_zero_threads_is_refused(self) -> None:
        with pytest.raises(ValueError, match="intra_op_threads"):
            OnnxRuntimeBackend(intra_op_threads=0)

    def test_more_threads_give_the_same_outputs(self, classifier: Any, frames: np.ndarray) -> None:
        probs = loaded(classifier.path, intra_op_threads=2).infer(frames)

        np.testing.assert_allclose(probs, classifier.reference(frames), rtol=1e-5, atol=1e-6)

    def test_zero_replicas_is_refused(self) -> None:
        with pytest.raises(ValueError, match="replicas"):
            OnnxRuntimeBackend(replicas=0)

    def test_calls_at_once_each_get_their_own_frames_outputs(self, classifier: Any) -> None:
        backend = loaded(classifier.path, replicas=2)
        inputs = [
            np.random.default_rng(i).random((1 + i % 5, 1, 8, 8), dtype=np.float32)
            for i in range(24)
        ]
        outputs: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            outputs[i] = backend.infer(inputs[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        backend.close()

        for i, x in enumerate(inputs):
            np.testing.assert_allclose(outputs[i], classifier.reference(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(BackendError, match="call load"):
            backend.infer(inputs[0])

    def test_zero_plan_size_is_refused(self) -> None:
        with pytest.raises(ValueError, match="plan_batches_up_to"):
            OnnxRuntimeBackend(plan_batches_up_to=0)

    @pytest.mark.skipif(
        "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
        reason="this onnxruntime build has the CUDA provider",
    )
    def test_an_unavailable_provider_is_named(self, classifier: Any) -> None:
        backend = OnnxRuntimeBackend(providers=["CUDAExecutionProvider"])

        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
            backend.load(classifier.path)


class TestBatchPlan:
    """On the CPU, each batch size runs whole or frame by frame, whichever timed faster."""

    def test_a_small_model_keeps_running_its_batches_whole(self, classifier: Any) -> None:
        # An 8x8 classifier: one call on 8 frames costs a fraction of 8 calls on one.
        backend = loaded(classifier.path, plan_batches_up_to=8)
        session = backend._session
        plan = onnxruntime_backend._plan_batches(
            session, backend.inputs[0], [backend.outputs[0].name], 8
        )
        assert len(plan) == 9 and not any(plan)

    @pytest.mark.parametrize("batch", [1, 2, 3, 8, 17])
    def test_frame_by_frame_gives_the_outputs_of_the_whole_batch(
        self, classifier: Any, batch: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The plan is timing: here every size above 1 is made to run frame by frame, and
        # a batch larger than the plan follows its largest size.
        calls: list[int] = []
        monkeypatch.setattr(
            onnxruntime_backend,
            "_plan_batches",
            lambda session, meta, names, up_to: (False, False, *([True] * (up_to - 1))),
        )
        backend = loaded(classifier.path, plan_batches_up_to=8)
        session = backend._session
        original = session.run
        monkeypatch.setattr(
            session,
            "run",
            lambda names, feed: (
                calls.append(len(next(iter(feed.values())))) or original(names, feed)
            ),
        )
        x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)

        probs = backend.infer(x)

        np.testing.assert_allclose(probs, classifier.reference(x), rtol=1e-5, atol=1e-6)
        assert calls == ([1] * batch)

    def test_without_a_plan_size_nothing_is_timed(
        self, classifier: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refuse(*args: object) -> tuple[bool, ...]:
            raise AssertionError("timed without being asked")

        monkeypatch.setattr(onnxruntime_backend, "_plan_batches", refuse)
        probs = loaded(classifier.path).infer(np.zeros((4, 1, 8, 8), dtype=np.float32))
        assert probs.shape == (4, 4)

    def test_a_model_with_another_dynamic_axis_runs_whole(self, classifier: Any) -> None:
        meta = TensorMeta("input", (None, 1, None, 8), "float32")
        assert onnxruntime_backend._plan_batches(None, meta, ["probs"], 8) == ()


class TestFrames:
    """``infer_frames``: what the edge runtime calls with a micro-batch's frames."""

    @pytest.mark.parametrize("count", [1, 2, 7])
    def test_frames_give_the_outputs_of_their_stacked_batch(
        self, classifier: Any, count: int
    ) -> None:
        frames = list(np.random.default_rng(count).random((count, 1, 8, 8), dtype=np.float32))
        backend = loaded(classifier.path)

        probs = backend.infer_frames(frames)

        np.testing.assert_allclose(probs, classifier.reference(np.stack(frames)), rtol=1e-5)
        again = backend.infer_frames(frames[::-1])  # the reused batch buffer, refilled
        np.testing.assert_allclose(again, probs[::-1], rtol=1e-6)

    @pytest.mark.parametrize("split", [False, True])
    def test_one_call_per_frame_where_the_plan_says_so_else_one_for_all(
        self, classifier: Any, split: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(
            onnxruntime_backend,
            "_plan_batches",
            lambda session, meta, names, up_to: (False, False, *([split] * (up_to - 1))),
        )
        backend = loaded(classifier.path, plan_batches_up_to=4)
        feeds: list[np.ndarray] = []
        original = backend._session.run
        monkeypatch.setattr(
            backend._session,
            "run",
            lambda names, feed: feeds.append(next(iter(feed.values()))) or original(names, feed),
        )
        frames = list(np.random.default_rng(3).random((4, 1, 8, 8), dtype=np.float32))

        probs = backend.infer_frames(frames)

        np.testing.assert_allclose(probs, classifier.reference(np.stack(frames)), rtol=1e-5)
        if split:  # each frame itself, with a batch axis added: no copy
            assert [f.shape[0] for f in feeds] == [1, 1, 1, 1]
            assert all(np.shares_memory(f, frame) for f, frame in zip(feeds, frames, strict=True))
        else:
            assert [f.shape[0] for f in feeds] == [4]

    def test_calls_at_once_on_one_session_each_stack_their_own_frames(
        self, classifier: Any
    ) -> None:
        backend = loaded(classifier.path)  # one session, called from many threads
        inputs = [
            list(np.random.default_rng(i).random((2 + i % 4, 1, 8, 8), dtype=np.float32))
            for i in range(32)
        ]
        outputs: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            for _ in range(20):
                outputs[i] = backend.infer_frames(inputs[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for i, frames in enumerate(inputs):
            expected = classifier.reference(np.stack(frames))
            np.testing.assert_allclose(outputs[i], expected, rtol=1e-5, atol=1e-6)

    def test_a_bad_frame_is_named_by_its_place(self, classifier: Any) -> None:
        backend = loaded(classifier.path)
        good = np.zeros((1, 8, 8), dtype=np.float32)

        with pytest.raises(InputMismatchError, match=r"frame 2 of 3: .*dtype float64"):
            backend.infer_frames([good, good, good.astype(np.float64)])
        with pytest.raises(InputMismatchError, match=r"frame 1 of 2: .*size 7 on axis 2"):
            backend.infer_frames([good, np.zeros((1, 7, 8), dtype=np.float32)])
        with pytest.raises(InputMismatchError, match=r"frame 0 of 1: .*numpy array"):
            backend.infer_frames([[0.0] * 64])  # type: ignore[list-item]
        with pytest.raises(InputMismatchError, match="empty batch"):
            backend.infer_frames([])

    def test_a_fixed_batch_model_takes_exactly_its_batch(self, make_classifier: Any) -> None:
        backend = loaded(make_classifier("fixed.onnx", batch=2).path)
        frame = np.zeros((1, 8, 8), dtype=np.float32)

        assert backend.infer_frames([frame, frame]).shape == (2, 4)
        with pytest.raises(InputMismatchError, match="exactly 2"):
            backend.infer_frames([frame])

    def test_frames_before_load_say_to_load(self) -> None:
        with pytest.raises(BackendError, match="call load"):
            OnnxRuntimeBackend().infer_frames([np.zeros((1, 8, 8), dtype=np.float32)])


class _ProvidersOffered:
    """What ``onnxruntime`` says it offers on a box with TensorRT (none here: no GPU)."""

    __version__ = "1.23.0"

    @staticmethod
    def get_available_providers() -> list[str]:
        return [onnxruntime_backend.TENSORRT, "CPUExecutionProvider"]


class TestTensorRTProviderEngineCache:
    def test_engines_go_to_a_folder_per_onnxruntime_and_tensorrt_version(
        self, tmp_path: Path
    ) -> None:
        # An engine does not survive a TensorRT upgrade, and ONNX Runtime does not put the
        # version into its engine file names: a JetPack update must not reuse old engines.
        backend = OnnxRuntimeBackend(engine_cache_dir=tmp_path / "engines")
        [(name, options), *_] = backend._provider_list(_ProvidersOffered)
        trt = onnxruntime_backend.tensorrt_version()
        folder = tmp_path / "engines" / f"ort-1.23.0-trt-{trt or 'unknown'}"
        assert name == onnxruntime_backend.TENSORRT
        assert options["trt_engine_cache_path"] == str(folder) and folder.is_dir()
        assert onnxruntime_backend.ort_engine_folder("1.23.0", "10.3.0") != (
            onnxruntime_backend.ort_engine_folder("1.23.0", "10.7.0")
        )
