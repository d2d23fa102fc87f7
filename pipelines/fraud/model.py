"""The fraud model: a small MLP on the feature vector, exported to ONNX as P(fraud) (batch, 1).

The standardisation of the inputs and the calibration of the operating point are buffers of
the model, so the exported graph takes the raw ``features`` vector and returns a calibrated
probability: ``sigmoid(logit - shift)``, where ``train.calibrate`` sets ``shift`` so that the
pipeline's declared threshold of 0.5 is the operating point (1 % false positives on the
validation split).  The shift moves no ranking, so ROC-AUC, PR-AUC and recall at a fixed FPR
are those of the uncalibrated model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines._checkpoints import export_graph
from pipelines.fraud.features import N_FEATURES

INPUT_NAME = "input"
OUTPUT_NAME = "score"


class FraudMLP(nn.Module):
    """Standardise, two hidden layers, one logit; returns the calibrated logit (N, 1)."""

    mean: torch.Tensor
    std: torch.Tensor
    shift: torch.Tensor

    def __init__(self, n_features: int = N_FEATURES, width: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("shift", torch.zeros(1))
        self.body = nn.Sequential(
            nn.Linear(n_features, width),
            nn.ReLU(),
            nn.Linear(width, width // 2),
            nn.ReLU(),
            nn.Linear(width // 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw feature rows (N, F) to calibrated logits (N, 1)."""
        out: torch.Tensor = self.body((x - self.mean) / self.std) - self.shift
        return out


class _WithSigmoid(nn.Module):
    """Wrap the logit model so the exported graph returns P(fraud)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export_onnx(model: FraudMLP, path: Path) -> Path:
    """Write ``model`` as one ONNX file: input ``input`` (N, F) float32, output ``score`` (N, 1).

    The batch axis is dynamic; the output is P(fraud) in [0, 1].
    """
    example = torch.zeros(1, int(model.mean.shape[0]), dtype=torch.float32)
    return export_graph(
        _WithSigmoid(model), example, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
