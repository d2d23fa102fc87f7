"""How the maintenance model is trained: the recipe, a plain-torch ``fit`` and the Ray Train loop.

The autoencoder learns only windows the maintenance records call normal (label 0): it must
learn what a healthy machine looks like, so a faulty window is what it cannot reconstruct.
Uplinked faulty windows (label 1) never enter its training; they serve to report recall.
Calibration: a fixed share of the normal windows is held out of training, and the threshold
is the ``quantile`` of their reconstruction error, so score 1.0 flags about ``1 - quantile`` of
unseen healthy windows (the false alarms the plant accepts) and the pipeline declares
``task.anomaly(threshold=1.0)``.

A retrain fine-tunes the serving model (``base_state``) on the pipeline's own training split
(replayed, so the machines it knew stay known) plus the uplinked normal windows repeated
(``copies``) so a few windows of a new machine type weigh in.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from continuum.errors import ConfigError
from pipelines._checkpoints import load_state, rows_of, save_checkpoint, shard_rows, stacked
from pipelines.maintenance.data import INPUT_SHAPE, load_splits
from pipelines.maintenance.model import SpectralAutoencoder, export_onnx


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run (see the module docstring)."""

    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-5
    quantile: float = 0.99
    calibration_share: float = 0.2
    oversample: int = 1
    new_to_base_cap: float = 1.0


SCRATCH = Recipe()
FINE_TUNE = Recipe(epochs=25, lr=2e-3, oversample=8)


def copies(recipe: Recipe, n_base: int, n_new: int) -> int:
    """Return how many times to repeat ``n_new`` new windows next to ``n_base`` base ones."""
    if n_new == 0:
        return 0
    if n_base == 0:
        return 1
    return max(1, min(recipe.oversample, round(recipe.new_to_base_cap * n_base / n_new)))


def _as_windows(x: NDArray[Any]) -> NDArray[np.float32]:
    return np.asarray(x, dtype=np.float32).reshape(-1, *INPUT_SHAPE)


def _calibration_split(
    n: int, share: float, generator: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    order = generator.permutation(n)
    n_cal = max(1, round(share * n)) if n > 1 else 0
    return order[n_cal:], order[:n_cal]


def fit(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    new_x: NDArray[np.float32] | None = None,
    new_y: NDArray[np.int64] | None = None,
    base_state: Mapping[str, torch.Tensor] | None = None,
    recipe: Recipe = SCRATCH,
    seed: int = 0,
    threads: int = 1,
) -> SpectralAutoencoder:
    """Train on the normal windows of ``x, y`` plus those of ``new_x, new_y`` (repeated, see
    ``copies``), then calibrate the threshold on held-out normal windows of both.

    With ``base_state`` the model starts from those weights (fine-tuning), else from scratch.

    Raises:
        ValueError: fewer than two normal windows to learn and calibrate from.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = _as_windows(x)[np.asarray(y).reshape(-1) == 0]
    new = np.zeros((0, *INPUT_SHAPE), dtype=np.float32)
    if new_x is not None and new_y is not None and len(new_x):
        new = _as_windows(new_x)[np.asarray(new_y).reshape(-1) == 0]
    if len(base) + len(new) < 2:
        raise ValueError(
            f"the autoencoder needs normal (label 0) windows to learn and calibrate from; "
            f"got {len(base) + len(new)}"
        )
    base_fit, base_cal = _calibration_split(len(base), recipe.calibration_share, rng)
    new_fit, new_cal = _calibration_split(len(new), recipe.calibration_share, rng)
    parts = [base[base_fit]] + [new[new_fit]] * copies(recipe, len(base_fit), len(new_fit))
    train_x = torch.from_numpy(np.concatenate(parts))
    calibration = torch.from_numpy(np.concatenate([base[base_cal], new[new_cal]]))
    model = SpectralAutoencoder()
    if base_state is not None:
        model.load_state_dict(dict(base_state))
    model.set_standardisation(train_x)
    _train(model, train_x, recipe, seed)
    model.eval()
    with torch.no_grad():
        errors = model(calibration if len(calibration) else train_x).numpy()
        model.threshold.fill_(float(max(np.quantile(errors, recipe.quantile), 1e-6)))
    return model


def _train(model: SpectralAutoencoder, data: torch.Tensor, recipe: Recipe, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    steps = recipe.epochs * max(1, -(-len(data) // recipe.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=steps)
    with torch.no_grad():
        feats = model.features(data)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(feats), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            batch = feats[order[start : start + recipe.batch_size]]
            optimiser.zero_grad()
            loss = ((model.reconstruct(batch) - batch) ** 2).mean()
            torch.autograd.backward(loss)
            optimiser.step()
            schedule.step()


def scores(model: SpectralAutoencoder, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return the calibrated anomaly scores (n,) of windows ``x``: > 1.0 means faulty."""
    model.eval()
    with torch.no_grad():
        error = model(torch.from_numpy(_as_windows(x)))
        out: NDArray[np.float32] = (error / model.threshold).numpy()
        return out


def precision_recall(
    model: SpectralAutoencoder, x: NDArray[np.float32], y: NDArray[np.int64]
) -> tuple[float, float]:
    """Return (precision, recall) of ``score > 1.0`` against labels ``y`` (1 = faulty)."""
    flagged = scores(model, x) > 1.0
    truth = np.asarray(y).reshape(-1) == 1
    hits = int((flagged & truth).sum())
    precision = hits / int(flagged.sum()) if flagged.any() else 0.0
    recall = hits / int(truth.sum()) if truth.any() else 0.0
    return precision, recall


def save(model: SpectralAutoencoder, directory: Path) -> tuple[Path, Path]:
    """Write ``model.pt`` (state dict) and ``model.onnx`` into ``directory``; return both paths."""
    return save_checkpoint(model, directory, export_onnx)


def rows_to_arrays(
    tensors: list[Any] | NDArray[Any], labels: list[Any] | NDArray[Any]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Turn dataset columns (flat float32 lists or raw float32 bytes per row) into arrays."""
    return stacked(rows_of(tensors), INPUT_SHAPE), np.asarray(labels, dtype=np.int64).reshape(-1)


#: Every key the loop's config may hold: what ``run_training`` sets for each run, and the
#: trainer's own options (``pipe.retrain(options=...)``).
CONFIG_KEYS = frozenset(
    {"base_model", "epochs", "seed", "threads", "shape"}
    | {"replay", "split_seed", "oversample", "lr", "quantile"}
)


def recipe_for(config: Mapping[str, Any]) -> Recipe:
    """Return the recipe a Ray Train config asks for: FINE_TUNE with a ``base_model``, else
    SCRATCH; ``epochs``, ``oversample``, ``lr`` and ``quantile`` override it.

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range.
    """
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        # A misspelt pipeline option (retrain(options=...)) must not train with the default.
        raise ConfigError(
            f"trainer config: unknown key(s) {', '.join(unknown)}; the maintenance trainer "
            f"takes {', '.join(sorted(CONFIG_KEYS))}"
        )
    recipe = FINE_TUNE if config.get("base_model") else SCRATCH
    changes: dict[str, Any] = {}
    for key, kind in (("epochs", int), ("oversample", int), ("lr", float), ("quantile", float)):
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"trainer config {key}: expected a number > 0 or null, got {value!r}")
        if kind is int and value != int(value):
            raise ConfigError(f"trainer config {key}: expected a whole number, got {value!r}")
        if key == "quantile" and not 0.5 <= value < 1:
            raise ConfigError(
                f"trainer config quantile: expected a share in [0.5, 1) of normal windows "
                f"below the threshold (e.g. 0.99), got {value!r}"
            )
        changes[key] = kind(value)
    return replace(recipe, **changes)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: retrain on the ``train`` dataset shard and report a checkpoint.

    Config keys: ``base_model`` (the parent's ``model.pt`` or None: from scratch), ``epochs``,
    ``seed``, ``shape`` ([3, 256]); optional ``replay`` (default True: add the pipeline's own
    training split), ``split_seed``, ``oversample``, ``lr``, ``quantile``, ``threads``.  Rows
    labelled 1 (faulty) are left out of training and reported as recall.
    """
    import ray.train

    started = time.monotonic()
    shape = tuple(config.get("shape") or INPUT_SHAPE)
    if shape != INPUT_SHAPE:
        raise ConfigError(
            f"the maintenance trainer takes windows shaped {INPUT_SHAPE} (channels, window), "
            f"got {shape}; declare edge input shape {list(INPUT_SHAPE)}"
        )
    recipe = recipe_for(config)
    base_model = config.get("base_model")
    tensors, labels = shard_rows()
    new_x, new_y = rows_to_arrays(tensors, labels)
    if config.get("replay", True):
        train = load_splits(int(config.get("split_seed", 0))).train
        base_x, base_y = train.x, train.y
    else:
        base_x = np.zeros((0, *INPUT_SHAPE), dtype=np.float32)
        base_y = np.zeros((0,), dtype=np.int64)
    model = fit(
        base_x,
        base_y,
        new_x=new_x,
        new_y=new_y,
        base_state=load_state(base_model) if base_model else None,
        recipe=recipe,
        seed=int(config.get("seed", 0)),
        threads=int(config.get("threads", 2)),
    )
    metrics: dict[str, Any] = {
        "new_samples": len(new_x),
        "new_normal": int((new_y == 0).sum()),
        "new_faulty": int((new_y == 1).sum()),
        "replay_samples": len(base_x),
        "threshold_error": float(model.threshold),
        "fine_tuned": bool(base_model),
        "train_seconds": time.monotonic() - started,
        **{f"recipe_{k}": v for k, v in asdict(recipe).items()},
    }
    if len(new_x):
        flagged = scores(model, new_x) > 1.0
        faulty = new_y == 1
        metrics["new_recall"] = float(flagged[faulty].mean()) if faulty.any() else None
        metrics["new_false_alarm_rate"] = (
            float(flagged[~faulty].mean()) if (~faulty).any() else None
        )
    with tempfile.TemporaryDirectory(prefix="maintenance-ckpt-") as tmp:
        save(model, Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
