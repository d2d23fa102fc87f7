"""The digits classifier: a small CNN for 8x8 images and its ONNX export for the edge."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines._checkpoints import export_graph

INPUT_NAME = "input"
OUTPUT_NAME = "probs"


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, one pooling step and a small head; returns logits (N, 10)."""

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, 1, 8, 8) to class logits (N, 10)."""
        out: torch.Tensor = self.head(self.features(x))
        return out


class _WithSoftmax(nn.Module):
    """Wrap a logits model so the exported graph returns probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Write ``model`` as one self-contained ONNX file: input ``input`` (N,1,8,8), output ``probs``.

    The batch axis is dynamic; the output is softmax probabilities (N, 10).
    """
    example = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    return export_graph(
        _WithSoftmax(model), example, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
