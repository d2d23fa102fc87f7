"""A Ray Train loop for the HPC tests: epochs of a set length, a checkpoint after each.

It resumes from the checkpoint Ray Train hands back (``ray.train.get_checkpoint()``), so a run
moved after its allocation ended starts at the epoch after its last checkpoint. Each checkpoint
holds ``model.pt`` (the epoch reached) and ``model.onnx`` (an identity graph: the controller's
candidate check loads it). Config: ``epochs`` (default 3), ``epoch_s`` (default 0.2).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper


def _identity_model(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def train_loop(config: dict[str, Any]) -> None:
    """Run ``epochs`` epochs of ``epoch_s`` seconds from the last checkpoint, reporting each."""
    import ray.train

    epochs = int(config.get("epochs") or 3)
    epoch_s = float(config.get("epoch_s", 0.2))
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int(json.loads((Path(folder) / "model.pt").read_text())["epoch"]) + 1
    labels = dict(ray.get_runtime_context().get_node_labels())
    for epoch in range(start, epochs):
        time.sleep(epoch_s)
        with tempfile.TemporaryDirectory(prefix="epochs-ckpt-") as tmp:
            (Path(tmp) / "model.pt").write_text(json.dumps({"epoch": epoch}))
            _identity_model(Path(tmp) / "model.onnx")
            metrics = {"epoch": epoch, "start_epoch": start, "node_labels": labels}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
