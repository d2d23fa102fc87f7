"""What every example trainer shares: its checkpoint (a state dict and the ONNX model the edge
runs, side by side) and the checks of a positive numeric option in its Ray Train config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from continuum.errors import ConfigError

__all__ = ["ONNX_NAME", "PT_NAME", "load_state", "positive_option", "save_checkpoint"]

PT_NAME = "model.pt"
ONNX_NAME = "model.onnx"

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
