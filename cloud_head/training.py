"""Retraining on the central pools: one Ray Train ``TorchTrainer`` run per candidate model.

``run_training`` places the pipeline's training loop by the pipeline's label selector (Ray
Train's ``ScalingConfig(label_selector=...)``), feeds it the labelled samples as a Ray Dataset,
and hands back the candidate's ONNX and state-dict files only when the whole run succeeded:
a failed, refused or unplaceable run raises and leaves no candidate behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from continuum.errors import (
    ConfigError,
    ContinuumError,
    InputMismatchError,
    NotReadyError,
    OperationTimeoutError,
    PlacementError,
    SpecError,
)
from continuum.labels import LabelSelector
from continuum.spec import PipelineSpec, resolve_ref

__all__ = ["TrainingError", "TrainingResult", "run_training"]

ONNX_NAME = "model.onnx"
PT_NAME = "model.pt"
CANDIDATE_DIR = "candidate"

#: Ray Train reads this in the driver and hands it to its controller: how long a worker group
#: may wait for its placement group before the start counts as failed.
_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class TrainingError(ContinuumError, RuntimeError):
    """A retraining run failed (the loop raised, or it produced no usable model)."""


@dataclass(frozen=True, kw_only=True)
class TrainingResult:
    """A finished run: the candidate's files, the loop's last metrics and where Ray ran it."""

    onnx_path: Path
    pt_path: Path
    metrics: dict[str, Any]
    ray_info: dict[str, Any] = field(default_factory=dict)


def run_training(
    trainer: PipelineSpec | str,
    train_x: NDArray[np.generic],
    train_y: NDArray[np.integer],
    *,
    base_model: Path | None,
    workdir: Path,
    epochs: int | None = None,
    seed: int = 0,
    label_selector: LabelSelector | Mapping[str, str] | None = None,
    gpus: float | None = None,
    cpus: float | None = None,
    config: Mapping[str, Any] | None = None,
    start_timeout_s: float = 60.0,
    run_name: str | None = None,
) -> TrainingResult:
    """Run ``trainer``'s loop on Ray Train over ``train_x, train_y``; return the candidate.

    Args:
        trainer: the pipeline spec (its ``retrain`` stage gives the loop, selector and
            resources) or an import ref ``"module:function"`` of a Ray Train loop.
        train_x: the labelled samples' tensors, (n, *shape); n may be 0 when the loop brings
            its own data.
        train_y: their integer labels, (n,).
        base_model: the parent's ``model.pt`` to fine-tune, or None to train from scratch; a
            path the worker can read (shared storage on a multi-node cluster).
        workdir: this run's directory: Ray's run storage and, on success only,
            ``candidate/model.onnx`` and ``candidate/model.pt``.
        epochs, seed: passed to the loop (``epochs`` None: the loop's own default).
        label_selector: nodes the worker may use (continuum syntax; a glob is expanded over the
            values the cluster's nodes carry); None: the spec's ``retrain.where``, else any.
        gpus, cpus: per worker; None: the spec's, else 0 GPUs and 1 CPU.
        config: extra keys for the loop's config.
        start_timeout_s: how long the worker may wait for a node with free resources.
        run_name: Ray Train run name (default: derived from the time).

    Raises:
        NotReadyError: this process is not connected to a Ray cluster.
        SpecError: the trainer ref does not resolve to a function.
        InputMismatchError: ``train_x`` and ``train_y`` differ in length.
        PlacementError: no alive node matches the selector with the resources asked for.
        OperationTimeoutError: matching nodes exist but none freed the resources in time.
        TrainingError: the loop failed or its checkpoint lacks a loadable model.
    """
    import ray

    if not ray.is_initialized():
        raise NotReadyError("not connected to a Ray cluster: call ray.init(address=...) first")
    ref, selector, gpus_, cpus_ = _resolve(trainer, label_selector, gpus, cpus)
    shape = list(trainer.edge.input.shape) if isinstance(trainer, PipelineSpec) else None
    loop = _loop(ref)
    x, y = _tensors(train_x, train_y)
    if base_model is not None and not Path(base_model).is_file():
        raise TrainingError(f"the parent checkpoint {base_model} does not exist")
    workdir, out_dir = _run_dirs(workdir)

    nodes = _alive_nodes()
    ray_selector = selector.to_ray(known_values=_known_values(nodes))
    _check_placeable(nodes, selector, cpus=cpus_, gpus=gpus_)
    resources = {"CPU": cpus_} | ({"GPU": gpus_} if gpus_ > 0 else {})
    loop_config: dict[str, Any] = {
        "base_model": None if base_model is None else str(Path(base_model).resolve()),
        "epochs": epochs,
        "seed": seed,
        "threads": max(1, int(cpus_)),
        "shape": list(x.shape[1:]) if x.ndim > 1 else shape,
        **dict(config or {}),
    }
    name = run_name or f"retrain-{int(time.time() * 1000)}"
    torch_trainer = _torch_trainer(
        loop, loop_config, (x, y), resources, ray_selector, workdir, name
    )
    started = time.monotonic()
    result = _fit(torch_trainer, ref, selector, start_timeout_s)
    onnx_path, pt_path = _publish(result.checkpoint, out_dir)
    placement = result.return_value if isinstance(result.return_value, dict) else {}
    ray_info = {
        "trainer": ref,
        "run_name": name,
        "storage_path": str(result.path),
        "label_selector": ray_selector,
        "resources_per_worker": resources,
        "duration_s": time.monotonic() - started,
        **placement,
    }
    return TrainingResult(
        onnx_path=onnx_path, pt_path=pt_path, metrics=dict(result.metrics or {}), ray_info=ray_info
    )


def _fit(trainer: _Fittable, ref: str, selector: LabelSelector, start_timeout_s: float) -> _Result:
    """Run the trainer to its end; return its result, which has a checkpoint."""
    try:
        with _env(_START_TIMEOUT_ENV, f"{start_timeout_s:g}"):
            result = trainer.fit()
    except Exception as error:
        raise _translate(error, selector, start_timeout_s) from error
    if result.checkpoint is None:
        raise TrainingError(f"the training loop {ref} reported no checkpoint")
    return result


def _loop(ref: str) -> Callable[[dict[str, Any]], Any]:
    """Return the training loop ``ref`` names (``module:function``)."""
    loop = resolve_ref(ref, field="retrain.trainer")
    if not callable(loop):
        raise SpecError(
            f"{ref!r} is not a function", field="retrain.trainer", fix="name the training loop"
        )
    return cast(Callable[[dict[str, Any]], Any], loop)


def _run_dirs(workdir: Path) -> tuple[Path, Path]:
    """Make the run's directory; return it (absolute) and where its candidate will be."""
    workdir = Path(workdir).resolve()
    out_dir = workdir / CANDIDATE_DIR
    if out_dir.exists():
        raise TrainingError(f"{out_dir} already holds a candidate; give each run its own workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, out_dir


def _tensors(
    train_x: NDArray[np.generic], train_y: NDArray[np.generic]
) -> tuple[NDArray[np.float32], NDArray[np.generic]]:
    """Return the samples as contiguous float32 and their labels, checked alike: int64
    classes, or float64 values (a regression's)."""
    x = np.ascontiguousarray(np.asarray(train_x, dtype=np.float32))
    labels = np.asarray(train_y)
    y = labels.astype(np.float64 if labels.dtype.kind == "f" else np.int64).reshape(-1)
    if len(x) != len(y):
        raise InputMismatchError(
            "training images and labels differ in length", expected=f"{len(x)}", got=f"{len(y)}"
        )
    return x, y


def _torch_trainer(
    loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    data: tuple[NDArray[np.float32], NDArray[np.generic]],
    resources: dict[str, float],
    selector: dict[str, str],
    storage: Path,
    name: str,
) -> _Fittable:
    """Return the Ray Train v2 ``TorchTrainer`` of one run: one worker, placed by ``selector``.

    Raises:
        ConfigError: Ray Train v2 is turned off (label selectors need it).
    """
    # Train v2 (the default since Ray 2.51) is the API with per-worker label selectors.
    from ray.train.v2._internal.constants import is_v2_enabled
    from ray.train.v2.api.config import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    if not is_v2_enabled():
        raise ConfigError(
            "RAY_TRAIN_V2_ENABLED is off: placing training by label selector needs Ray Train "
            "v2; unset it"
        )
    trainer = TorchTrainer(
        # Train v2 hands rank 0's return value back in Result.return_value.
        train_loop_per_worker=cast(
            Callable[[dict[Any, Any]], None], functools.partial(_placed_loop, loop)
        ),
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=1,
            use_gpu=resources.get("GPU", 0.0) > 0,
            resources_per_worker=resources,
            label_selector=selector or None,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage / "ray"),
            # One attempt: a retry would hide the failure from the controller, which decides.
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
        ),
        datasets={"train": _dataset(*data)},
    )
    return cast(_Fittable, trainer)


class _Result(Protocol):
    """What a finished Ray Train run hands back (``ray.train.v2.api.result.Result``)."""

    checkpoint: Any
    metrics: dict[str, Any] | None
    path: str
    return_value: Any


class _Fittable(Protocol):
    """A trainer that runs when ``fit`` is called (``TorchTrainer``)."""

    def fit(self) -> _Result: ...


def _placed_loop(loop: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> dict[str, Any]:
    """Run the pipeline's loop; return where it ran (Ray Train hands rank 0's return back)."""
    import ray

    loop(config)
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_labels": dict(context.get_node_labels())}


def _resolve(
    trainer: PipelineSpec | str,
    label_selector: LabelSelector | Mapping[str, str] | None,
    gpus: float | None,
    cpus: float | None,
) -> tuple[str, LabelSelector, float, float]:
    if isinstance(trainer, PipelineSpec):
        if trainer.retrain is None:
            raise SpecError(
                f"pipeline {trainer.name!r} declares no retrain stage",
                field="retrain",
                fix="declare pipe.retrain(trainer=...)",
            )
        ref = trainer.retrain.trainer
        selector = LabelSelector.parse(
            trainer.retrain.where if label_selector is None else label_selector,
            field="retrain.where",
        )
        gpus = trainer.retrain.gpus if gpus is None else gpus
        cpus = trainer.retrain.cpus if cpus is None else cpus
    else:
        ref = trainer
        selector = LabelSelector.parse(label_selector, field="retrain.where")
    return ref, selector, float(gpus or 0.0), float(1.0 if cpus is None else cpus)


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n.get("Alive")]


def _known_values(nodes: list[dict[str, Any]]) -> dict[str, set[str]]:
    known: dict[str, set[str]] = {}
    for node in nodes:
        for key, value in (node.get("Labels") or {}).items():
            known.setdefault(key, set()).add(value)
    return known


def _check_placeable(
    nodes: list[dict[str, Any]], selector: LabelSelector, *, cpus: float, gpus: float
) -> None:
    """Refuse at once a run no node could ever take, instead of leaving it pending."""
    matching = [n for n in nodes if selector.matches(n.get("Labels") or {})]
    if not matching:
        raise PlacementError(
            f"no alive Ray node matches the training selector {{{selector}}} "
            f"({len(nodes)} nodes alive); label a node accordingly or change retrain.where",
            rule="retrain.where",
        )
    roomy = [
        n
        for n in matching
        if n.get("Resources", {}).get("CPU", 0.0) >= cpus
        and n.get("Resources", {}).get("GPU", 0.0) >= gpus
    ]
    if not roomy:
        have = ", ".join(
            f"{n.get('NodeManagerAddress')}: CPU {n.get('Resources', {}).get('CPU', 0):g} "
            f"GPU {n.get('Resources', {}).get('GPU', 0):g}"
            for n in matching
        )
        raise PlacementError(
            f"the nodes matching {{{selector}}} are too small for one training worker "
            f"(needs CPU {cpus:g}, GPU {gpus:g}; have {have})",
            rule="retrain.resources",
        )


def _dataset(x: NDArray[np.float32], y: NDArray[np.generic]) -> Any:
    """Return a Ray Dataset with a ``tensor`` column (flat float32 list) and ``label`` (int64
    classes, or float64 values)."""
    import pyarrow as pa
    import ray.data

    width = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    flat = pa.array(x.reshape(-1), type=pa.float32())
    tensor = pa.FixedSizeListArray.from_arrays(flat, width)
    label_type = pa.float64() if y.dtype.kind == "f" else pa.int64()
    table = pa.table({"tensor": tensor, "label": pa.array(y, type=label_type)})
    return ray.data.from_arrow(table)


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    # Ray Train reads its start timeout from the driver's environment when fit() begins;
    # set it for this call only.
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _translate(error: Exception, selector: LabelSelector, start_timeout_s: float) -> ContinuumError:
    """Map Ray Train's failure to the continuum error a supervisor acts on."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    cause = getattr(error, "controller_failure", None)
    if isinstance(cause, WorkerGroupStartupTimeoutError):
        return OperationTimeoutError(
            f"no node matching {{{selector}}} freed the resources for the training worker "
            f"within {start_timeout_s:g} s; free capacity there or raise start_timeout_s"
        )
    return TrainingError(f"the training run failed: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:500]


def _publish(checkpoint: Any, out_dir: Path) -> tuple[Path, Path]:
    """Copy the checkpoint's model files to ``out_dir`` atomically, after checking them."""
    staging = Path(tempfile.mkdtemp(prefix=".candidate-", dir=out_dir.parent))
    try:
        with checkpoint.as_directory() as source:
            for name in (ONNX_NAME, PT_NAME):
                path = Path(source) / name
                if not path.is_file():
                    raise TrainingError(f"the checkpoint lacks {name}: the loop must write it")
                shutil.copy2(path, staging / name)
        _check_onnx(staging / ONNX_NAME)
        # One rename: readers see the whole candidate or none of it.
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / ONNX_NAME, out_dir / PT_NAME


def _check_onnx(path: Path) -> None:
    import onnxruntime

    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise TrainingError(f"the candidate {path.name} does not load: {error}") from error
