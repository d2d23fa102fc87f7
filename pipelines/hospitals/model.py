"""The screening model: a small MLP on the 30 measurements, exported to ONNX as P(malignant).

The standardisation of the inputs is a pair of buffers of the model, so the exported graph
takes the device's raw readings and returns a probability (batch, 1); the pipeline's task is
``binary(threshold=0.5)``.  In a federated round the buffers are averaged with the weights
(weighted by each site's rows), which gives the pooled mean exactly and the pooled spread
closely, without any row leaving its site.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines._checkpoints import export_graph
from pipelines.hospitals.data import N_FEATURES

INPUT_NAME = "measurements"
OUTPUT_NAME = "p_malignant"


class ScreeningMLP(nn.Module):
    """Standardise, one hidden layer, one logit; returns the logit (N, 1)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int = N_FEATURES, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.body = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw measurement rows (N, 30) to logits (N, 1)."""
        out: torch.Tensor = self.body((x - self.mean) / self.std)
        return out


class _WithSigmoid(nn.Module):
    """Wrap the logit model so the exported graph returns P(malignant)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export_onnx(model: ScreeningMLP, path: Path) -> Path:
    """Write ``model`` as one ONNX file: ``measurements`` (N, 30) -> ``p_malignant`` (N, 1)."""
    example = torch.zeros(1, int(model.mean.shape[0]), dtype=torch.float32)
    return export_graph(
        _WithSigmoid(model), example, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
