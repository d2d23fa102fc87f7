"""What every example trainer shares: its checkpoint (a state dict and the ONNX model the edge
runs, side by side), the ONNX export itself, the dataset rows turned back into arrays, the
check of a positive numeric option in its Ray Train config, and the progress a long run
reports between epochs so that a run cut short (a Slurm allocation's end, a pre-emption)
resumes where it was rather than from the start (``EpochProgress``)."""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from continuum.errors import ConfigError, InputMismatchError

__all__ = [
    "ONNX_NAME",
    "OPSET",
    "PROGRESS_NAME",
    "PT_NAME",
    "EpochProgress",
    "binary_labels",
    "export_graph",
    "load_state",
    "positive_option",
    "rows_of",
    "save_checkpoint",
    "shard_rows",
    "stacked",
]

PT_NAME = "model.pt"
ONNX_NAME = "model.onnx"
#: A checkpoint reported between epochs holds this file (and no ONNX: it is not a candidate).
PROGRESS_NAME = "progress.pt"
#: How often a run reports its progress by default: a run shorter than this never does.
PROGRESS_EVERY_S = 30.0
#: The ONNX opset every example model is exported with.
OPSET = 17

M = TypeVar("M", bound=nn.Module)


def save_checkpoint(
    model: M, directory: Path, export_onnx: Callable[[M, Path], Path]
) -> tuple[Path, Path]:
    """Write ``model.pt`` (state dict) and ``model.onnx`` (by ``export_onnx``) into
    ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    pt_path = directory / PT_NAME
    torch.save(model.state_dict(), pt_path)
    return pt_path, export_onnx(model, directory / ONNX_NAME)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict written by ``save_checkpoint``."""
    state: dict[str, torch.Tensor] = torch.load(Path(path), map_location="cpu", weights_only=True)
    return state


def binary_labels(y: Any, what: str, model: str, meaning: tuple[str, str]) -> NDArray[np.int64]:
    """Return ``y`` as int64 0/1 labels of a binary ``model``; refuse any other value, naming
    what 0 and 1 mean (``meaning``) and where the labels came from (``what``)."""
    labels = np.asarray(y).reshape(-1)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise InputMismatchError(
            f"{what}: the {model} model learns labels 0 ({meaning[0]}) and 1 ({meaning[1]})",
            expected="labels in {0, 1}",
            got=str(np.unique(labels)[:5].tolist()),
        )
    return labels.astype(np.int64)


def positive_option(config: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    """Return ``config[key]`` as ``kind`` if set (None or absent: None); refuse a bad value."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"trainer config {key}: expected a number > 0 or null, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"trainer config {key}: expected a whole number, got {value!r}")
    return kind(value)


def export_graph(
    wrapped: nn.Module, example: torch.Tensor, path: Path, *, input_name: str, output_name: str
) -> Path:
    """Write ``wrapped`` (the model with its output head: softmax, sigmoid, calibration) as
    one ONNX file at ``path``, the batch axis dynamic; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False: the dynamo one needs onnxscript, DESIGN §10)
        # announces its own deprecation; the export itself is exact for these models.
        warnings.filterwarnings(
            "ignore", message=r"You are using the legacy TorchScript", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"The feature will be removed", category=DeprecationWarning
        )
        with torch.no_grad():
            torch.onnx.export(
                wrapped.eval(),
                (example,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
                external_data=False,
            )
    return path


def rows_of(tensors: Sequence[Any] | NDArray[Any]) -> list[NDArray[Any]]:
    """Return a Ray Dataset's ``tensor`` column (flat float32 lists, or raw float32 bytes per
    row, as ``run_training`` writes it) as one array per row."""
    return [
        np.frombuffer(t, dtype=np.float32) if isinstance(t, bytes | bytearray) else np.asarray(t)
        for t in tensors
    ]


def shard_rows() -> tuple[list[Any], list[Any]]:
    """Return the Ray Train run's ``train`` shard as its rows' tensors and labels (both empty
    when the run has no dataset); ``rows_of`` and ``stacked`` make arrays of them."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    tensors: list[Any] = []
    labels: list[Any] = []
    if shard is not None:
        for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
            tensors.extend(list(batch["tensor"]))
            labels.extend(batch["label"].tolist())
    return tensors, labels


def stacked(rows: Sequence[NDArray[Any]], shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Return ``rows`` as one float32 array of samples shaped ``shape`` (none: an empty one)."""
    if not rows:
        return np.zeros((0, *shape), dtype=np.float32)
    return np.stack(rows).astype(np.float32).reshape(-1, *shape)


class EpochProgress:
    """The epochs a Ray Train loop has done, reported as checkpoints and read back on resume.

    A run that outlives its allocation is started again under the same name and storage
    (``cloud_head/_training_pool.py``), and Ray Train hands the loop the last checkpoint it
    reported (``ray.train.get_checkpoint()``). ``resume()`` returns the training state saved
    there (model, optimiser, schedule, random generator and the epoch reached) or None;
    ``after_epoch`` reports a new one at most every ``every_s`` seconds, so a short run pays
    nothing and a long one loses at most that much work. The final checkpoint, with the
    model and its ONNX, is still the loop's own last report.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        every = positive_option(config, "checkpoint_every_s", float)
        self.every_s = PROGRESS_EVERY_S if every is None else every
        self._last = time.monotonic()

    def resume(self) -> dict[str, Any] | None:
        """Return the state of the last progress checkpoint of this run, or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            path = Path(folder) / PROGRESS_NAME
            if not path.is_file():  # a finished run's checkpoint: the model, not progress
                return None
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def after_epoch(self, epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        """Report ``state()`` (taken only when due) as the progress after ``epoch``."""
        if time.monotonic() - self._last < self.every_s:
            return
        import ray.train

        with tempfile.TemporaryDirectory(prefix="progress-") as tmp:
            torch.save({**state(), "epoch": epoch}, Path(tmp) / PROGRESS_NAME)
            ray.train.report(
                {"epoch": epoch, "progress": True},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
            )
        self._last = time.monotonic()
