"""The inputs signal: summary features of the tensors a model is fed (``InputFeatures``)
and ``InputDriftMonitor``, which tests each feature's window against its reference."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from continuum.drift._buffers import FloatRows, ReferenceWindow
from continuum.drift._monitor import NOT_READY, MonitorBase
from continuum.drift._specs import DriftState, InputsSpec
from continuum.drift._stats import FloatArray, ks_sorted
from continuum.errors import InputMismatchError

#: An image is subsampled (every k-th pixel) to at most this many pixels per side before
#: its features are computed: subsampling keeps fine detail (a blur still lowers the edge
#: energy) and bounds the cost of a 224x224 frame to that of a 64x64 one.
_DETAIL_PX = 64
#: ...and block-averaged to at most this many pixels per side for the random projections.
_GRID_PX = 16
#: The projections' seed: fixed, so every node and every restart computes the same features.
_PROJECTION_SEED = 0x1D_5EED


class InputFeatures:
    """Turn input tensors of one shape into rows of summary features (see ``InputsSpec``).

    Args:
        shape: the shape of one input tensor, without the batch axis.
        spec: the detector (number of projections, cap on plain vector features).
    """

    def __init__(self, shape: tuple[int, ...], spec: InputsSpec) -> None:
        self.shape = shape
        layout = spec.layout
        if layout == "auto":
            layout = "image" if len(shape) in (2, 3) else "vector"
        if layout == "image" and len(shape) not in (2, 3):
            raise InputMismatchError(
                "an image input is (channels, height, width) or (height, width)",
                expected="a 2-D or 3-D input shape, or drift.inputs(layout='vector')",
                got=f"shape {shape}",
            )
        if layout == "signal" and len(shape) not in (1, 2):
            raise InputMismatchError(
                "a signal input is (channels, samples) or (samples,)",
                expected="a 1-D or 2-D input shape, or drift.inputs(layout='vector')",
                got=f"shape {shape}",
            )
        self._image = layout == "image"
        self._signal_bands = spec.bands if layout == "signal" else 0
        if self._signal_bands:
            channels = 1 if len(shape) == 1 else shape[0]
            samples = shape[-1]
            # Equal bands of the one-sided spectrum, the constant term left out (the mean).
            self._band_edges = np.linspace(1, samples // 2 + 1, self._signal_bands + 1).astype(int)
            self.names = [
                f"{what}[{c}]"
                for c in range(channels)
                for what in ("mean", "rms", "crest", *(f"band{b}" for b in range(spec.bands)))
            ]
            self._projection = None
            return
        if self._image:
            channels = 1 if len(shape) == 2 else shape[0]
            height, width = shape[-2:]
            self._step = (math.ceil(height / _DETAIL_PX), math.ceil(width / _DETAIL_PX))
            rows, cols = math.ceil(height / self._step[0]), math.ceil(width / self._step[1])
            self._block = (math.ceil(rows / _GRID_PX), math.ceil(cols / _GRID_PX))
            self._crop = (
                rows // self._block[0] * self._block[0],
                cols // self._block[1] * self._block[1],
            )
            size = channels * (self._crop[0] // self._block[0]) * (self._crop[1] // self._block[1])
            projections = spec.projections
            self.names = [
                *(f"mean[{c}]" for c in range(channels)),
                *(f"contrast[{c}]" for c in range(channels)),
                *(f"edge_energy[{c}]" for c in range(channels)),
            ]
        else:
            size = math.prod(shape)
            projections = spec.projections if size > spec.max_features else 0
            self.names = [] if projections else [f"feature_{i}" for i in range(size)]
        self.names += [f"proj_{k}" for k in range(projections)]
        rng = np.random.default_rng(_PROJECTION_SEED)
        self._projection = None
        if projections:
            matrix = rng.standard_normal((size, projections)) / math.sqrt(size)
            if self._image:
                matrix = self._spread_over_blocks(matrix, channels)
            self._projection = matrix.astype(np.float32)

    def _spread_over_blocks(self, matrix: FloatArray, channels: int) -> FloatArray:
        """Return the projection of block means as one of the (cropped) subsampled image.

        Projecting block means is linear, so it equals projecting the pixels with each
        block's weight spread over its pixels (divided by the block's area): one matrix
        product instead of an average and a product.
        """
        (rows, cols), (block_rows, block_cols) = self._crop, self._block
        grid = matrix.reshape(channels, rows // block_rows, cols // block_cols, -1)
        spread = np.repeat(np.repeat(grid, block_rows, axis=1), block_cols, axis=2)
        return spread.reshape(channels * rows * cols, -1) / (block_rows * block_cols)

    def rows(
        self, inputs: npt.NDArray[np.generic] | Sequence[npt.NDArray[np.generic]]
    ) -> FloatRows:
        """Return one row of features per input: (n, len(names)) float64.

        Raises:
            InputMismatchError: an input's shape is not ``shape``.
        """
        batch = self._as_batch(inputs)
        n = batch.shape[0]
        if self._signal_bands:
            return self._signal_rows(batch.reshape(n, -1, batch.shape[-1]))
        if self._image:
            images = batch.reshape(n, -1, *batch.shape[-2:])
            planes = images.reshape(n * images.shape[1], -1)
            channels = (n, images.shape[1])
            parts = [
                planes.mean(axis=1).reshape(channels),
                planes.std(axis=1).reshape(channels),
                self._edges(images).reshape(channels),
            ]
            rows, cols = self._crop
            if (rows, cols) != images.shape[2:]:
                images = images[:, :, :rows, :cols]
            flat = images.reshape(n, -1)
        else:
            flat = batch.reshape(n, -1)
            parts = [] if self._projection is not None else [flat]
        if self._projection is not None:
            parts.append(flat @ self._projection)
        return np.concatenate(parts, axis=1).astype(np.float64)

    def _signal_rows(self, windows: npt.NDArray[np.float32]) -> FloatRows:
        """Per window and channel: mean, RMS about it, crest factor and band energy shares."""
        values = windows.astype(np.float64)
        mean = values.mean(axis=2)
        centred = values - mean[..., None]
        rms = np.sqrt(np.mean(centred * centred, axis=2))
        peak = np.abs(centred).max(axis=2)
        crest = np.where(rms > 0, peak / np.where(rms > 0, rms, 1.0), 0.0)
        power = np.abs(np.fft.rfft(centred, axis=2)) ** 2
        edges = self._band_edges
        bands = np.stack(
            [power[..., lo:hi].sum(axis=2) for lo, hi in itertools.pairwise(edges)],
            axis=2,
        )
        total = bands.sum(axis=2, keepdims=True)
        shares = np.where(total > 0, bands / np.where(total > 0, total, 1.0), 0.0)
        per_channel = np.concatenate(
            [mean[..., None], rms[..., None], crest[..., None], shares], axis=2
        )
        return per_channel.reshape(windows.shape[0], -1)

    def _as_batch(
        self, inputs: npt.NDArray[np.generic] | Sequence[npt.NDArray[np.generic]]
    ) -> npt.NDArray[np.float32]:
        """Stack the inputs, each subsampled first (an image's every k-th pixel)."""
        cut = (
            (Ellipsis, slice(None, None, self._step[0]), slice(None, None, self._step[1]))
            if self._image
            else (Ellipsis,)
        )
        if isinstance(inputs, np.ndarray):
            if inputs.shape[1:] != self.shape:
                raise _shape_mismatch(self.shape, inputs.shape[1:])
            return np.asarray(inputs[cut], dtype=np.float32)
        for item in inputs:
            if np.shape(item) != self.shape:
                raise _shape_mismatch(self.shape, np.shape(item))
        if not inputs:
            return np.empty((0, *self.shape), dtype=np.float32)
        return np.stack([np.asarray(item[cut], dtype=np.float32) for item in inputs])

    @staticmethod
    def _edges(images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Mean absolute difference between neighbouring pixels, per image and channel."""
        planes = images.reshape(-1, *images.shape[2:])
        energy = np.zeros(planes.shape[0], dtype=np.float32)
        if planes.shape[2] > 1:
            across = np.abs(planes[:, :, 1:] - planes[:, :, :-1])
            energy += across.reshape(planes.shape[0], -1).mean(axis=1)
        if planes.shape[1] > 1:
            down = np.abs(planes[:, 1:] - planes[:, :-1])
            energy += down.reshape(planes.shape[0], -1).mean(axis=1)
        return energy


def _shape_mismatch(expected: tuple[int, ...], got: tuple[int, ...]) -> InputMismatchError:
    return InputMismatchError(
        "every input the detector watches must have the shape of the first",
        expected=f"shape {expected}",
        got=f"shape {got}",
    )


class InputDriftMonitor(MonitorBase[InputsSpec]):
    """Run one ``inputs`` detector (see ``InputsSpec``) over a stream of input tensors.

    The input shape is taken from the first update after construction or ``reset``.  Rows
    whose features are not finite (a NaN in a frame) are left out.  Scoring costs one KS
    test per feature, O(features x window log window).  Not thread-safe.
    """

    def __init__(self, spec: InputsSpec) -> None:
        super().__init__(spec, (InputsSpec,), what="an inputs", fix="pass drift.inputs(...)")
        self._features: InputFeatures | None = None
        self._buffers: ReferenceWindow | None = None
        self._sorted_reference: FloatArray | None = None

    @property
    def feature_names(self) -> list[str]:
        """The features watched (empty until the first update)."""
        return [] if self._features is None else list(self._features.names)

    def reset(self) -> None:
        """Forget everything; the next ``spec.reference`` inputs become the reference."""
        self._features = None
        self._buffers = None
        self._sorted_reference = None
        self._state = NOT_READY

    def update(
        self, inputs: npt.NDArray[np.generic] | Sequence[npt.NDArray[np.generic]]
    ) -> DriftState:
        """Add a batch of inputs, (n, *shape) or a list of n tensors, and return the state.

        Raises:
            InputMismatchError: an input's shape differs from the first one's.
        """
        if len(inputs) == 0:
            return self._state
        if self._features is None or self._buffers is None:
            first = inputs[0]
            shape = tuple(np.shape(first))
            self._features = InputFeatures(shape, self._spec)
            width = len(self._features.names)
            self._buffers = ReferenceWindow(self._spec.reference, self._spec.window, width)
        rows = self._features.rows(inputs)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            rows = rows[finite]
        if self._buffers.push(rows):
            self._sorted_reference = np.sort(self._buffers.reference.T, axis=1)
        if self._buffers.ready:
            self._state = self._score(self._buffers.window)
        return self._state

    def _score(self, window: FloatRows) -> DriftState:
        assert self._sorted_reference is not None and self._features is not None
        recent = np.sort(window.T, axis=1)
        results = [
            ks_sorted(ref, win) for ref, win in zip(self._sorted_reference, recent, strict=True)
        ]
        statistics = [r.statistic for r in results]
        worst = int(np.argmax(statistics))
        p_value = min(r.pvalue for r in results)
        return DriftState(
            score=statistics[worst],
            drifted=p_value < self._spec.alpha / len(results),
            ready=True,
            p_value=p_value,
            feature=self._features.names[worst],
        )
