"""A tiny pipeline's Ray Train loop for the federated tests: a logistic model on the breast
cancer measurements (30 values, 2 classes), exported to ONNX with a softmax head.

It is an ordinary loop (``ray.train.get_dataset_shard``, ``ray.train.report`` with a
checkpoint, ``base_model`` to fine-tune), the same whether it runs centrally or at a site.
A node started with ``TINY_TRAINER_SCALE_UPDATE=<k>`` multiplies the update it reports by
``k``: a broken or poisoned site.  A file ``offline`` in the site's data folder makes the
loop fail, as a site whose server is down would (tests remove it to bring the site back); a
file ``slow`` makes it take 60 s more, long enough to kill its node mid-round.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines._checkpoints import export_graph, load_state, rows_of, save_checkpoint, stacked

N_FEATURES = 30


class Logistic(nn.Module):
    """Standardise by stored statistics, then one linear layer to two logits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.linear = nn.Linear(N_FEATURES, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)


def export_onnx(model: Logistic, path: Path) -> Path:
    """Write the model with its softmax head as ONNX."""
    return export_graph(
        _WithSoftmax(model), torch.zeros(1, N_FEATURES), path, input_name="x", output_name="p"
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Fit the logistic model on the ``train`` shard (from ``base_model`` if given); report."""
    import ray.train

    site = Path(os.environ.get("CONTINUUM_SITE_DATA", "/nonexistent"))
    if (site / "offline").exists():
        raise RuntimeError("the site is offline (its offline flag is set)")
    if (site / "slow").exists():
        time.sleep(60)
    torch.manual_seed(int(config.get("seed") or 0))
    shard = ray.train.get_dataset_shard("train")
    tensors: list[Any] = []
    labels: list[Any] = []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        tensors.extend(list(batch["tensor"]))
        labels.extend(batch["label"].tolist())
    x = torch.from_numpy(stacked(rows_of(tensors), (N_FEATURES,)))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    model = Logistic()
    base = config.get("base_model")
    if base:
        model.load_state_dict(load_state(base))
    else:
        model.mean.copy_(x.mean(dim=0))
        model.std.copy_(x.std(dim=0).clamp_min(1e-3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(int(config.get("epochs") or 20)):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    scale = float(os.environ.get("TINY_TRAINER_SCALE_UPDATE", "1"))
    if scale != 1.0:
        with torch.no_grad():
            for name, value in model.named_parameters():
                value.copy_(start[name] + scale * (value - start[name]))
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    with tempfile.TemporaryDirectory(prefix="tiny-ckpt-") as tmp:
        save_checkpoint(model, Path(tmp), export_onnx)
        ray.train.report(
            {"train_accuracy": accuracy, "rows": len(y)},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
        )
