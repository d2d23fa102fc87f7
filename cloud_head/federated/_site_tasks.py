"""What runs at a site, in a Ray task placed there by the site's label selector.

``train_at_site`` runs the pipeline's own Ray Train loop in Ray Train's local mode
(``ScalingConfig(num_workers=0)``: the loop runs in this task's process, with the same
``ray.train`` API), on a Ray Dataset built here from the site's stores, so no sample leaves
the node.  ``evaluate_at_site`` scores two ONNX models on the site's holdout, and
``count_at_site`` counts its labelled samples (for the retrain trigger).  Each hands back only
what may cross the site's border: weights, counts and metrics.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from cloud_head.federated.site_data import site_split, site_stores
from continuum.errors import InputMismatchError
from continuum.spec import PipelineSpec, resolve_ref

__all__ = ["count_at_site", "evaluate_at_site", "node_record", "train_at_site"]

_PT = "model.pt"
_ONNX = "model.onnx"


def node_record() -> dict[str, Any]:
    """Return where this process runs: its Ray node id and labels (for audit and tests)."""
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_labels": dict(context.get_node_labels())}


def train_at_site(
    spec: PipelineSpec,
    site: str,
    base_state: Mapping[str, np.ndarray] | None,
    config: Mapping[str, Any],
    *,
    want_graph: bool,
) -> dict[str, Any]:
    """Train the pipeline's loop on this site's data from ``base_state``; return the update.

    Returns ``state`` (name -> array), ``num_examples``, ``metrics`` (the loop's numbers),
    ``counts`` (rows by kind), where it ran, and with ``want_graph`` the local model's ONNX
    bytes (a graph to write the aggregate into; it holds weights only).

    Raises:
        ConfigError: the node has no site data.
        InputMismatchError: the site has no labelled rows to train on.
    """
    import torch

    assert spec.retrain is not None
    stores = site_stores(spec.tenant, spec.name)
    try:
        split = site_split(spec, stores)
    finally:
        stores.close()
    if len(split.train_y) == 0:
        raise InputMismatchError(
            f"site {site} has no labelled samples or reference rows for {spec.name}",
            expected="at least one labelled row at the site",
            got="0",
        )
    with tempfile.TemporaryDirectory(prefix="continuum-site-") as tmp:
        work = Path(tmp)
        loop_config = dict(config)
        if base_state is not None:
            torch.save(
                {k: torch.from_numpy(np.array(v)) for k, v in base_state.items()}, work / "base.pt"
            )
            loop_config["base_model"] = str(work / "base.pt")
        out = work / "reported"
        result = _fit_local(
            spec.retrain.trainer, loop_config, split.train_x, split.train_y, work, out
        )
        state = torch.load(out / _PT, map_location="cpu", weights_only=True)
        reply: dict[str, Any] = {
            "site": site,
            "state": {k: v.detach().cpu().numpy() for k, v in state.items()},
            "num_examples": len(split.train_y),
            "metrics": _numbers(result),
            "counts": split.counts,
            **node_record(),
        }
        if want_graph:
            reply["graph"] = (out / _ONNX).read_bytes()
        return reply


def _fit_local(
    ref: str,
    config: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    work: Path,
    out: Path,
) -> Mapping[str, Any]:
    """Run the loop ``ref`` in Ray Train's local mode on ``x, y``; keep its last checkpoint in
    ``out``; return its last metrics."""
    from ray.train.v2.api.config import RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    from cloud_head.training import _dataset, _tensors

    loop = cast(Callable[[dict[str, Any]], Any], resolve_ref(ref, field="retrain.trainer"))
    tx, ty = _tensors(x, y)
    with _data_stays_on_this_node():
        trainer = TorchTrainer(
            train_loop_per_worker=cast(
                Callable[[dict[Any, Any]], None], functools.partial(_keeping_checkpoint, loop, out)
            ),
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=0),  # local mode: in this task's process
            run_config=RunConfig(name=f"site-{work.name}", storage_path=str(work / "ray")),
            datasets={"train": _dataset(tx, ty)},
        )
        result = trainer.fit()
    if not (out / _PT).is_file() or not (out / _ONNX).is_file():
        raise InputMismatchError(
            f"the training loop {ref} reported no checkpoint with {_PT} and {_ONNX}",
            expected="ray.train.report(..., checkpoint=...) with both files",
            got="none",
        )
    return dict(result.metrics or {})


@contextlib.contextmanager
def _data_stays_on_this_node() -> Iterator[None]:
    """Pin every task Ray Data starts here to this node (its ``ray.io/node-id`` label).

    Ray Data computes a block's metadata in a task of its own (``from_arrow``), and the
    scheduler may run it on any node with a free CPU, the block of samples with it; a site's
    node is small and busy with this very task, so that happened.
    """
    import ray
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    previous = options.label_selector
    options.label_selector = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    try:
        yield
    finally:
        options.label_selector = previous


def _keeping_checkpoint(
    loop: Callable[[dict[str, Any]], Any], out: Path, config: dict[str, Any]
) -> None:
    """Run ``loop``, copying each checkpoint it reports into ``out`` as it reports it.

    Ray Train's local mode keeps a reference to the reported checkpoint, not a copy, and a
    loop reports from a temporary folder that is gone when it returns.
    """
    from ray.train.v2._internal.execution.train_fn_utils import get_train_fn_utils

    utils = get_train_fn_utils()
    report = utils.report

    def copying(metrics: dict[str, Any], checkpoint: Any = None, **kwargs: Any) -> None:
        if checkpoint is not None:
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(checkpoint.path, out)
        report(metrics, checkpoint=checkpoint, **kwargs)

    utils.report = copying  # type: ignore[method-assign,assignment]
    try:
        loop(config)
    finally:
        utils.report = report  # type: ignore[method-assign]


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep the loop's finite numeric metrics (what crosses must be numbers, not data)."""
    kept: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            kept[str(key)] = float(value)
    return kept


def evaluate_at_site(
    spec: PipelineSpec, site: str, candidate: bytes, current: bytes | None
) -> dict[str, Any]:
    """Score the ``candidate`` and ``current`` ONNX models on this site's holdout.

    Returns the holdout's ``size`` and each model's score with the gate's metric (None
    where the site's holdout alone cannot be scored), and where it ran.
    """
    from cloud_head.gate import _predict, score

    stores = site_stores(spec.tenant, spec.name)
    try:
        split = site_split(spec, stores)
    finally:
        stores.close()
    metric = spec.gate_metric
    reply: dict[str, Any] = {
        "site": site,
        "size": len(split.holdout_y),
        "counts": split.counts,
        "candidate": None,
        "current": None,
        **node_record(),
    }
    if len(split.holdout_y) == 0:
        return reply
    task = spec.edge.task
    with tempfile.TemporaryDirectory(prefix="continuum-site-gate-") as tmp:
        for name, model in (("candidate", candidate), ("current", current)):
            if model is None:
                continue
            path = Path(tmp) / f"{name}.onnx"
            path.write_bytes(model)
            try:
                reply[name] = score(split.holdout_y, _predict(path, split.holdout_x, task), metric)
            except InputMismatchError:  # e.g. a ranking metric on one class: not scorable here
                reply[name] = None
    return reply


def count_at_site(spec: PipelineSpec, site: str) -> dict[str, Any]:
    """Count this site's labelled samples of ``spec`` (a count may cross; the rows do not)."""
    from cloud_head.labelling import labelled

    stores = site_stores(spec.tenant, spec.name)
    try:
        count = int(labelled(stores.samples, stores.labels, spec.tenant, spec.name).num_rows)
    finally:
        stores.close()
    return {"site": site, "labelled": count, **node_record()}
