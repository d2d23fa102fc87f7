"""Which backends run here, what "auto" resolves to, and opening a backend by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from continuum.backends import (
    OnnxRuntimeBackend,
    TensorRTBackend,
    available_backends,
    open_backend,
    select_backend,
    tensorrt_unavailable_reason,
)
from continuum.errors import BackendUnavailableError, ConfigError

TENSORRT_RUNS = tensorrt_unavailable_reason() is None
no_tensorrt = pytest.mark.skipif(TENSORRT_RUNS, reason="TensorRT runs on this machine")


class TestAvailableBackends:
    def test_onnxruntime_is_listed(self) -> None:
        assert "onnxruntime" in available_backends()

    def test_tensorrt_is_listed_exactly_when_it_runs(self) -> None:
        assert ("tensorrt" in available_backends()) == TENSORRT_RUNS

    def test_preferred_backend_comes_first(self) -> None:
        assert available_backends()[0] == select_backend("auto")


class TestSelectBackend:
    def test_onnxruntime_selects_itself(self) -> None:
        assert select_backend("onnxruntime") == "onnxruntime"

    def test_an_unknown_name_lists_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="'auto', 'onnxruntime' or 'tensorrt'"):
            select_backend("openvino")

    @no_tensorrt
    def test_auto_falls_back_to_onnxruntime_without_tensorrt(self) -> None:
        assert select_backend("auto") == "onnxruntime"

    @no_tensorrt
    def test_tensorrt_without_tensorrt_names_what_is_missing_and_the_fix(self) -> None:
        with pytest.raises(BackendUnavailableError) as caught:
            select_backend("tensorrt")

        message = str(caught.value)
        assert "backend 'tensorrt' is unavailable" in message
        assert "pip install continuum[tensorrt]" in message
        assert 'backend="onnxruntime"' in message

    @no_tensorrt
    def test_loading_a_tensorrt_backend_without_tensorrt_is_refused(self, classifier: Any) -> None:
        with pytest.raises(BackendUnavailableError, match="continuum\\[tensorrt\\]"):
            TensorRTBackend().load(classifier.path)


class TestOpenBackend:
    def test_open_onnxruntime_returns_a_loaded_backend(
        self, classifier: Any, frames: np.ndarray
    ) -> None:
        backend = open_backend("onnxruntime", classifier.path, intra_op_threads=1)

        assert isinstance(backend, OnnxRuntimeBackend)
        np.testing.assert_allclose(
            backend.infer(frames), classifier.reference(frames), rtol=1e-5, atol=1e-6
        )

    def test_open_accepts_a_string_path(self, classifier: Any) -> None:
        backend = open_backend("onnxruntime", str(classifier.path))

        assert backend.inputs[0].name == "input"

    @no_tensorrt
    def test_open_auto_without_tensorrt_gives_onnxruntime(self, classifier: Any) -> None:
        assert isinstance(open_backend("auto", classifier.path), OnnxRuntimeBackend)

    def test_open_with_an_unknown_name_is_refused_before_loading(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            open_backend("tflite", tmp_path / "absent.onnx")


class TestLazyImports:
    def test_importing_the_backends_imports_no_runtime(self) -> None:
        code = (
            "import sys, continuum.backends; "
            "loaded = [m for m in ('tensorrt', 'pycuda', 'onnxruntime') if m in sys.modules]; "
            "print(','.join(loaded))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )

        assert result.stdout.strip() == ""
