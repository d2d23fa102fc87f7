"""Real ONNX models for the backend tests, built with onnx.helper, and their numpy reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

#: ONNX Runtime 1.31 runs opset 17 / IR 9 models; newer onnx defaults may be ahead of it.
OPSET = 17
IR_VERSION = 9


@dataclass(frozen=True)
class Classifier:
    """A Conv+Relu+Flatten+Gemm+Softmax model on (N,1,8,8) saved to ``path``, with its weights."""

    path: Path
    conv_w: np.ndarray
    conv_b: np.ndarray
    gemm_w: np.ndarray
    gemm_b: np.ndarray

    def reference(self, x: np.ndarray) -> np.ndarray:
        """Return the model's output for ``x`` computed in float64 numpy."""
        x = x.astype(np.float64)
        n, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        conv = np.zeros((n, self.conv_w.shape[0], h, w))
        for i in range(3):
            for j in range(3):
                window = padded[:, :, i : i + h, j : j + w]
                conv += np.einsum("nchw,oc->nohw", window, self.conv_w[:, :, i, j])
        conv += self.conv_b[None, :, None, None]
        logits = np.maximum(conv, 0).reshape(n, -1) @ self.gemm_w.T + self.gemm_b
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def build_classifier(
    path: Path, *, seed: int = 0, batch: int | str = "N", classes: int = 4
) -> Classifier:
    """Write a small classifier to ``path``; ``batch`` is "N" (dynamic) or a fixed size."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(size=2).astype(np.float32)
    gemm_w = (rng.normal(size=(classes, 2 * 8 * 8)) * 0.2).astype(np.float32)
    gemm_b = rng.normal(size=classes).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(gemm_w, "gemm_w"),
            numpy_helper.from_array(gemm_b, "gemm_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    save_model(model, path)
    return Classifier(path, conv_w, conv_b, gemm_w, gemm_b)


def build_two_input_model(path: Path) -> Path:
    """Write a model that adds two (N,4) float32 inputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    save_model(model, path)
    return path


@pytest.fixture
def classifier(tmp_path: Path) -> Classifier:
    """A dynamic-batch classifier model on disk."""
    return build_classifier(tmp_path / "classifier.onnx")


@pytest.fixture
def make_classifier(tmp_path: Path) -> Callable[..., Classifier]:
    """Build further classifiers (other seeds, a fixed batch) under ``tmp_path``."""

    def make(name: str = "other.onnx", **kwargs: Any) -> Classifier:
        return build_classifier(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def two_input_model(tmp_path: Path) -> Path:
    """A model with two inputs, which an edge stage cannot feed."""
    return build_two_input_model(tmp_path / "two_inputs.onnx")


@pytest.fixture
def frames() -> np.ndarray:
    """Five (1,8,8) float32 frames in [0, 1]."""
    return np.random.default_rng(42).random((5, 1, 8, 8), dtype=np.float32)
