"""The TensorRT backend on a real GPU: engine build, cache, outputs, input checks.

Marked ``gpu``; skips with the reason where tensorrt, pycuda or an NVIDIA GPU is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from continuum.backends import (
    InferenceBackend,
    TensorRTBackend,
    open_backend,
    tensorrt_unavailable_reason,
)
from continuum.errors import BackendError, InputMismatchError

pytestmark = pytest.mark.gpu

pytest.importorskip("tensorrt", reason="tensorrt is not installed", exc_type=ImportError)
pytest.importorskip("pycuda.driver", reason="pycuda is not installed", exc_type=ImportError)
_REASON = tensorrt_unavailable_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


def loaded(path: Path, cache: Path, **kwargs: Any) -> TensorRTBackend:
    backend = TensorRTBackend(engine_cache_dir=cache, **kwargs)
    backend.load(path)
    return backend


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "engines"


class TestOutputs:
    def test_fp32_engine_matches_the_numpy_reference(
        self, classifier: Any, cache: Path, frames: np.ndarray
    ) -> None:
        backend = loaded(classifier.path, cache, precision="fp32")
        try:
            probs = backend.infer(frames)
        finally:
            backend.close()

        assert probs.shape == (5, 4)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs, classifier.reference(frames), rtol=1e-3, atol=1e-4)

    def test_auto_precision_stays_close_to_the_reference(
        self, classifier: Any, cache: Path, frames: np.ndarray
    ) -> None:
        backend = loaded(classifier.path, cache)
        try:
            probs = backend.infer(frames)
        finally:
            backend.close()

        np.testing.assert_allclose(probs, classifier.reference(frames), atol=2e-2)

    @pytest.mark.parametrize("batch", [1, 3, 8])
    def test_every_batch_up_to_max_batch_runs(
        self, classifier: Any, cache: Path, batch: int
    ) -> None:
        x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
        backend = loaded(classifier.path, cache, precision="fp32", max_batch=8)
        try:
            probs = backend.infer(x)
        finally:
            backend.close()

        np.testing.assert_allclose(probs, classifier.reference(x), rtol=1e-3, atol=1e-4)

    @pytest.mark.parametrize("count", [1, 3, 8])
    def test_frames_stacked_into_the_staging_buffer_give_the_batch_outputs(
        self, classifier: Any, cache: Path, count: int
    ) -> None:
        frames = list(np.random.default_rng(count).random((count, 1, 8, 8), dtype=np.float32))
        backend = loaded(classifier.path, cache, precision="fp32", max_batch=8)
        try:
            probs = backend.infer_frames(frames)
            with pytest.raises(InputMismatchError, match="max_batch=8"):
                backend.infer_frames(frames * 9)
        finally:
            backend.close()

        np.testing.assert_allclose(
            probs, classifier.reference(np.stack(frames)), rtol=1e-3, atol=1e-4
        )

    def test_metadata_shows_the_dynamic_batch(self, classifier: Any, cache: Path) -> None:
        backend = loaded(classifier.path, cache)
        try:
            assert isinstance(backend, InferenceBackend)
            assert backend.inputs[0].describe() == "float32[N,1,8,8]"
            assert backend.outputs[0].describe() == "float32[N,4]"
            assert backend.max_batch == 8
        finally:
            backend.close()

    def test_auto_opens_tensorrt_here(self, classifier: Any, cache: Path) -> None:
        backend = open_backend("auto", classifier.path, engine_cache_dir=cache)
        try:
            assert isinstance(backend, TensorRTBackend)
        finally:
            backend.close()


class TestEngineCache:
    def test_second_load_reuses_the_cached_engine(self, classifier: Any, cache: Path) -> None:
        first = loaded(classifier.path, cache)
        first.close()
        assert first.built_engine
        assert first.engine_path is not None and first.engine_path.is_file()
        built_at = first.engine_path.stat().st_mtime_ns

        second = loaded(classifier.path, cache)
        second.close()

        assert not second.built_engine
        assert second.engine_path == first.engine_path
        assert first.engine_path.stat().st_mtime_ns == built_at

    def test_another_max_batch_builds_another_engine(self, classifier: Any, cache: Path) -> None:
        small = loaded(classifier.path, cache, max_batch=4)
        small.close()
        large = loaded(classifier.path, cache, max_batch=16)
        large.close()

        assert large.built_engine
        assert large.engine_path != small.engine_path

    def test_a_corrupt_cached_engine_is_rebuilt(
        self, classifier: Any, cache: Path, frames: np.ndarray
    ) -> None:
        first = loaded(classifier.path, cache)
        first.close()
        assert first.engine_path is not None
        first.engine_path.write_bytes(b"not an engine")

        again = loaded(classifier.path, cache)
        try:
            assert again.built_engine
            np.testing.assert_allclose(again.infer(frames), classifier.reference(frames), atol=2e-2)
        finally:
            again.close()


class TestInputChecks:
    def test_a_batch_over_max_batch_is_refused(self, classifier: Any, cache: Path) -> None:
        backend = loaded(classifier.path, cache, max_batch=4)
        try:
            with pytest.raises(InputMismatchError, match="N<=4"):
                backend.infer(np.zeros((5, 1, 8, 8), dtype=np.float32))
        finally:
            backend.close()

    def test_wrong_dtype_names_expected_and_got(self, classifier: Any, cache: Path) -> None:
        backend = loaded(classifier.path, cache)
        try:
            with pytest.raises(
                InputMismatchError, match=r"expected float32\[N,1,8,8\], got float64\[4,1,8,8\]"
            ):
                backend.infer(np.zeros((4, 1, 8, 8), dtype=np.float64))
        finally:
            backend.close()

    def test_a_corrupt_model_is_refused_with_its_path(self, tmp_path: Path, cache: Path) -> None:
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(np.random.default_rng(0).bytes(4096))

        with pytest.raises(BackendError, match=re.escape(str(garbage))):
            TensorRTBackend(engine_cache_dir=cache).load(garbage)

    def test_infer_after_close_says_to_load(self, classifier: Any, cache: Path) -> None:
        backend = loaded(classifier.path, cache)
        backend.close()

        with pytest.raises(BackendError, match="call load"):
            backend.infer(np.zeros((1, 1, 8, 8), dtype=np.float32))
