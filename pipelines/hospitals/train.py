"""How the screening model is trained: the recipe, a plain-torch ``fit`` and the Ray Train loop.

The loop is an ordinary Ray Train loop (``ray.train.get_dataset_shard("train")``,
``ray.train.report(checkpoint=...)``): the residency plan decides where it runs.  Central,
it would run on a cloud worker over the pooled store; federated (this pipeline's data is
``restricted``: ``same_site``), each site runs it on its own node over its own rows, from the
round's global weights, and only the weights, the row count and the metrics leave the site.

At a site, the ``train`` shard already holds the site's own reference rows (its seed data,
``<root>/reference/<tenant>/<pipeline>.npz``, less its holdout) next to its uplinked,
pathology-labelled samples (``cloud_head.federated.site_split``), so the known cases hold
while the new ones teach the change; the loop itself reads nothing but its shard.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from continuum import metrics
from continuum.errors import ConfigError, InputMismatchError
from pipelines._checkpoints import (
    binary_labels,
    load_state,
    positive_option,
    rows_of,
    save_checkpoint,
    shard_rows,
    stacked,
)
from pipelines.hospitals.data import N_FEATURES, SHAPE
from pipelines.hospitals.model import ScreeningMLP, export_onnx


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run (one local round of a federated one)."""

    epochs: int = 60
    lr: float = 1e-2
    batch_size: int = 32
    weight_decay: float = 1e-4


SCRATCH = Recipe()
#: A federated round or a fine-tune starts from weights that already work: fewer epochs.
FINE_TUNE = Recipe(epochs=20, lr=1e-2)


def _checked_labels(y: Any, what: str) -> NDArray[np.int64]:
    return binary_labels(y, what, "screening", ("benign", "malignant"))


def fit(
    x: NDArray[np.floating],
    y: NDArray[np.integer],
    *,
    base_state: Mapping[str, torch.Tensor] | None = None,
    recipe: Recipe = SCRATCH,
    seed: int = 0,
    threads: int = 1,
) -> ScreeningMLP:
    """Train a ``ScreeningMLP`` on ``x, y``.

    With ``base_state`` the model starts from those weights and keeps their standardisation,
    else it starts afresh and standardises by ``x``.

    Raises:
        InputMismatchError: labels other than 0/1, or rows not 30 measurements wide.
        ValueError: nothing to train on.
    """
    rows = np.array(x, dtype=np.float32)  # a copy: the splits are read only
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES:
        raise InputMismatchError(
            "training rows are not measurement vectors",
            expected=f"(n, {N_FEATURES}) float32",
            got=str(rows.shape),
        )
    labels = _checked_labels(y, "training labels")
    if len(rows) == 0:
        raise ValueError("nothing to train on: no rows")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data_x = torch.from_numpy(rows)
    data_y = torch.from_numpy(labels.astype(np.float32)).reshape(-1, 1)
    model = ScreeningMLP()
    if base_state is not None:
        model.load_state_dict(dict(base_state))
    else:
        model.mean.copy_(data_x.mean(dim=0))
        model.std.copy_(data_x.std(dim=0).clamp_min(1e-3) if len(data_x) > 1 else model.std)
    loss_fn = nn.BCEWithLogitsLoss()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(data_x), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            optimiser.zero_grad()
            loss_fn(model(data_x[idx]), data_y[idx]).backward()
            optimiser.step()
    model.eval()
    return model


def predict(model: nn.Module, x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return P(malignant) (n,) of ``model`` on measurement rows ``x``, as the ONNX graph does."""
    model.eval()
    with torch.no_grad():
        rows = torch.from_numpy(np.array(x, dtype=np.float32).reshape(-1, N_FEATURES))
        out: NDArray[np.float32] = torch.sigmoid(model(rows)).numpy().reshape(-1)
    return out


def scores(model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer]) -> dict[str, float]:
    """Return accuracy (at 0.5) and ROC-AUC of ``model`` on ``x, y``."""
    p = predict(model, x)
    out = {"accuracy": metrics.accuracy(y, (p >= 0.5).astype(np.int64))}
    if 0 < int(np.sum(y)) < len(y):
        out["roc_auc"] = metrics.roc_auc(y, p)
    return out


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]], counts: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Return the row-weighted mean of ``states`` (FedAvg), buffers included.

    Used offline only (the demo's baselines and ``benchmarks/federated.py`` replay what the
    federated rounds do); the rounds themselves aggregate with Flower in ``cloud_head``.
    """
    if not states or len(states) != len(counts) or sum(counts) <= 0:
        raise ValueError("average_states needs one positive count per state")
    total = float(sum(counts))
    out: dict[str, torch.Tensor] = {}
    for key in states[0]:
        mean = torch.zeros_like(states[0][key], dtype=torch.float64)
        for state, count in zip(states, counts, strict=True):
            mean += state[key].double() * (count / total)
        out[key] = mean.to(states[0][key].dtype)
    return out


def save(model: ScreeningMLP, directory: Path) -> tuple[Path, Path]:
    """Write ``model.pt`` (state dict) and ``model.onnx`` into ``directory``; return both."""
    return save_checkpoint(model, directory, export_onnx)


def rows_to_arrays(
    tensors: Sequence[Any], labels: Sequence[Any]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Turn dataset columns (flat float32 lists or raw float32 bytes per row) into arrays."""
    rows = rows_of(tensors)
    for i, row in enumerate(rows):
        if row.size != N_FEATURES:
            raise InputMismatchError(
                f"training row {i} is not one measurement vector",
                expected=f"{N_FEATURES} float32 values",
                got=f"{row.size} values",
            )
    return stacked(rows, SHAPE), _checked_labels(np.asarray(labels), "uplinked labels")


#: Every key the loop's config may hold: what ``run_training`` (or a federated round) sets,
#: and the trainer's own options (``pipe.retrain(options=...)``).
CONFIG_KEYS = frozenset({"base_model", "epochs", "seed", "threads", "shape", "lr", "proximal_mu"})


def recipe_for(config: Mapping[str, Any]) -> Recipe:
    """Return the recipe a Ray Train config asks for: FINE_TUNE with a ``base_model``, else
    SCRATCH; ``epochs`` and ``lr`` override it (``proximal_mu``, FedProx's, is accepted and
    unused: the rounds are few and short).

    Raises:
        ConfigError: an unknown key or a value out of range.
    """
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"trainer config: unknown key(s) {', '.join(unknown)}; the screening trainer takes "
            f"{', '.join(sorted(CONFIG_KEYS))}"
        )
    recipe = FINE_TUNE if config.get("base_model") else SCRATCH
    changes: dict[str, Any] = {}
    for key, kind in (("epochs", int), ("lr", float)):
        value = positive_option(config, key, kind)
        if value is not None:
            changes[key] = value
    return replace(recipe, **changes)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: train on the ``train`` shard and report a checkpoint holding
    ``model.pt`` and ``model.onnx``.

    Config keys: ``base_model`` (the parent's ``model.pt``, or None: from scratch),
    ``epochs``, ``seed``, ``shape`` ([30]); optional ``lr``, ``threads``.
    """
    import ray.train

    started = time.monotonic()
    shape = tuple(config.get("shape") or SHAPE)
    if shape != SHAPE:
        raise ConfigError(f"the screening trainer takes rows shaped {SHAPE}, got {shape}")
    recipe = recipe_for(config)
    base_model = config.get("base_model")
    tensors, labels = shard_rows()
    x, y = rows_to_arrays(tensors, labels)
    model = fit(
        x,
        y,
        base_state=load_state(base_model) if base_model else None,
        recipe=recipe,
        seed=int(config.get("seed", 0)),
        threads=int(config.get("threads", 1)),
    )
    report: dict[str, Any] = {
        **{f"train_{k}": v for k, v in scores(model, x, y).items()},
        "rows": len(x),
        "malignant_rows": int(y.sum()),
        "fine_tuned": bool(base_model),
        "train_seconds": time.monotonic() - started,
        **{f"recipe_{k}": v for k, v in asdict(recipe).items()},
    }
    with tempfile.TemporaryDirectory(prefix="screening-ckpt-") as tmp:
        save(model, Path(tmp))
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
