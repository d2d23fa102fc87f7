"""The maintenance model: a small 1-D convolutional autoencoder over a window's spectrum, and
its ONNX export whose output is the calibrated anomaly score.

A bearing defect shows as lines at its defect frequencies, at a phase that changes from
window to window, so the model looks at the vibration's log amplitude spectrum (Welch's
average of Hann-windowed DFTs over half-overlapping segments, written as reshapes and two fixed
matrix products, which every ONNX runtime and TensorRT run) rather than the raw waveform;
temperature and current enter as the window's mean.  Features are standardised with the
training set's statistics (buffers, exported with the graph), so the edge feeds raw physical
units.

The exported graph returns ``score`` (batch, 1) float32: the reconstruction error divided by
the calibrated threshold (``threshold`` buffer, set by ``train.fit`` to a quantile of the error
on held-out normal windows), so score 1.0 is the operating point and the pipeline declares
``task.anomaly(threshold=1.0)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines._checkpoints import export_graph
from pipelines.maintenance.bearings import CHANNELS, WINDOW

INPUT_NAME = "input"
OUTPUT_NAME = "score"
#: Welch segments: 256 samples (4 Hz bins at 1,024 Hz), hopping by half a segment.
SEGMENT = 256
N_BINS = SEGMENT // 2 + 1
N_SCALARS = len(CHANNELS) - 1
N_FEATURES = N_BINS + N_SCALARS


def _dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return Hann-windowed real DFT matrices (n, n//2 + 1): cosine and sine parts."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    k = np.arange(n // 2 + 1)
    phase = 2 * np.pi * np.outer(np.arange(n), k) / n
    scale = 2.0 / hann.sum()  # a sine of amplitude A reads A at its bin
    cos = (hann[:, None] * np.cos(phase) * scale).astype(np.float32)
    sin = (hann[:, None] * np.sin(phase) * scale).astype(np.float32)
    return torch.from_numpy(cos), torch.from_numpy(sin)


class SpectralAutoencoder(nn.Module):
    """Features (log spectrum + slow channels) -> conv encoder -> code -> dense decoder.

    ``forward`` returns the per-window mean squared reconstruction error of the standardised
    features (N,); ``score`` divides it by ``threshold``.
    """

    dft_cos: torch.Tensor
    dft_sin: torch.Tensor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, width: int = 8, code: int = 12) -> None:
        super().__init__()
        cos, sin = _dft_matrices(SEGMENT)
        self.register_buffer("dft_cos", cos)
        self.register_buffer("dft_sin", sin)
        self.register_buffer("feature_mean", torch.zeros(N_FEATURES))
        self.register_buffer("feature_std", torch.ones(N_FEATURES))
        self.register_buffer("threshold", torch.ones(()))
        self.encoder = nn.Sequential(
            nn.Conv1d(1, width, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        conv_out = 2 * width * math.ceil(math.ceil(N_BINS / 2) / 2)
        self.bottleneck = nn.Sequential(nn.Linear(conv_out + N_SCALARS, code), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code, 64), nn.ReLU(), nn.Linear(64, N_FEATURES))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows (N, 3, WINDOW) in physical units to unstandardised features (N, F)."""
        vibration = x[:, 0, :]
        # Welch: the window cut into half-overlapping segments by two reshapes (no unfold, so
        # any ONNX runtime takes it), each segment's DFT, the power averaged over segments.
        half = SEGMENT // 2
        aligned = vibration.reshape(-1, WINDOW // SEGMENT, SEGMENT)
        shifted = vibration[:, half : WINDOW - half].reshape(-1, WINDOW // SEGMENT - 1, SEGMENT)
        segments = torch.cat([aligned, shifted], dim=1)
        segments = segments - segments.mean(dim=2, keepdim=True)
        real = segments @ self.dft_cos
        imag = segments @ self.dft_sin
        power = (real * real + imag * imag).mean(dim=1)
        spectrum = 0.5 * torch.log(power + 1e-6)
        slow = x[:, 1:, :].mean(dim=2)
        return torch.cat([spectrum, slow], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standardised features (N, F) the autoencoder reconstructs."""
        return (self.raw_features(x) - self.feature_mean) / self.feature_std

    def reconstruct(self, feats: torch.Tensor) -> torch.Tensor:
        """Encode and decode standardised features (N, F)."""
        spectrum = feats[:, :N_BINS].unsqueeze(1)
        code = self.bottleneck(torch.cat([self.encoder(spectrum), feats[:, N_BINS:]], dim=1))
        out: torch.Tensor = self.decoder(code)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction error (N,) of windows (N, 3, WINDOW)."""
        feats = self.features(x)
        return ((self.reconstruct(feats) - feats) ** 2).mean(dim=1)

    def set_standardisation(self, x: torch.Tensor) -> None:
        """Set the feature mean and std from training windows ``x`` (N, 3, WINDOW)."""
        with torch.no_grad():
            raw = self.raw_features(x)
            self.feature_mean.copy_(raw.mean(dim=0))
            self.feature_std.copy_(raw.std(dim=0).clamp_min(1e-3))


class _Score(nn.Module):
    """Wrap the autoencoder so the exported graph returns the calibrated score (N, 1)."""

    def __init__(self, model: SpectralAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score: torch.Tensor = (self.model(x) / self.model.threshold).unsqueeze(1)
        return score


def export_onnx(model: SpectralAutoencoder, path: Path) -> Path:
    """Write ``model`` as one ONNX file: input ``input`` (N, 3, WINDOW) float32, output
    ``score`` (N, 1) float32 >= 0, where 1.0 is the calibrated threshold.  Batch is dynamic."""
    example = torch.zeros(1, len(CHANNELS), WINDOW, dtype=torch.float32)
    return export_graph(
        _Score(model), example, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
