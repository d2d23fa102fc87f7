"""The TensorRT engine cache key: a pure function of model, TensorRT version, GPU and build."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from continuum.backends import EngineSpec, engine_cache_key
from continuum.backends.tensorrt import (
    default_engine_cache_dir,
    engine_cache_path,
    fast_fp16,
)

SPEC = EngineSpec(
    model_sha256="ab" * 32,
    tensorrt_version="10.13.0.35",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    max_batch=8,
    precision="auto",
)


class TestEngineCacheKey:
    def test_key_is_a_sha256_hex(self) -> None:
        assert re.fullmatch(r"[0-9a-f]{64}", engine_cache_key(SPEC))

    def test_equal_specs_share_a_key(self) -> None:
        assert engine_cache_key(SPEC) == engine_cache_key(dataclasses.replace(SPEC))

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("model_sha256", "cd" * 32),
            ("tensorrt_version", "10.14.1.48"),
            ("gpu_name", "Orin (nvgpu)"),
            ("compute_capability", (8, 7)),
            ("max_batch", 16),
            ("precision", "fp32"),
        ],
    )
    def test_any_change_gives_another_key(self, field: str, value: Any) -> None:
        changed = dataclasses.replace(SPEC, **{field: value})

        assert engine_cache_key(changed) != engine_cache_key(SPEC)

    def test_cache_path_is_the_key_under_the_cache_dir(self, tmp_path: Path) -> None:
        path = engine_cache_path(tmp_path, SPEC)

        assert path == tmp_path / f"{engine_cache_key(SPEC)}.engine"


class TestDefaults:
    def test_default_cache_dir_follows_xdg_cache_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

        assert default_engine_cache_dir() == tmp_path / "continuum" / "engines"

    @pytest.mark.parametrize(
        ("capability", "fast"),
        [((5, 2), False), ((5, 3), True), ((6, 1), False), ((6, 2), True), ((8, 7), True)],
    )
    def test_fast_fp16_follows_the_compute_capability(
        self, capability: tuple[int, int], fast: bool
    ) -> None:
        assert fast_fp16(capability) is fast
